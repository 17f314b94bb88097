"""Definitions fuzzed: random layer stacks with arguments good and bad (hyperparameters among them), over several
input shapes and training settings. A definition either fails to load with one line at its file and line, or
loads and compiles in Keras to the declared output: what the definition language accepts, Keras builds (the
language's checks and shape inference agree with Keras, so a mistake never surfaces later, mid-build)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from buildsys.actions.compile import build_model, compile_model
from buildsys.errors import DefinitionError
from buildsys.workspace import Workspace
from tests.conftest import write_definition

COUNTS = st.sampled_from(
    ["0", "1", "2", "3", "5", "8", "-1", "True", "2.5", "'3'", "(2, 2)", "(3, 1)", "(0, 2)", "[2, 2]", "None", "10**9",
     "(9, 9)", "hp.Int('u', 1, 64)", "hp.Int('u', 0, 4)", "hp.Choice('c', [8, 16])"]
)  # fmt: skip
ACTIVATIONS = st.sampled_from(["'relu'", "'softmax'", "'nope'", "None", "3", "hp.Choice('a', ['relu', 'tanh'])"])
PADDINGS = st.sampled_from(["'same'", "'valid'", "'full'", "1"])
RATES = st.sampled_from(["0.5", "1.0", "0", "-0.1", "'x'", "2", "hp.Float('r', 0.0, 0.9)", "hp.Float('r', 0.5, 2.0)"])
NAMES = st.sampled_from(
    ["", ", name='a'", ", name='b'", ", name='dense'", ", name='image'", ", name=''", ", name='a b'"]
)
RULES = st.sampled_from(["None", "max_norm(2.0)", "max_norm(-1)", "max_norm(2.0, axis=5)", "l1_l2(0.01)", "l1_l2(-1)"])


def _layer() -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(lambda units, activation, name: f"Dense({units}, activation={activation}{name})", COUNTS,
                  ACTIVATIONS, NAMES),
        st.builds(lambda bias, constraint, regularizer: f"Dense(4, use_bias={bias}, kernel_constraint={constraint}, "
                  f"kernel_regularizer={regularizer})", st.sampled_from(["True", "False", "1", "hp.Boolean('b')"]),
                  RULES, RULES),
        st.builds(lambda filters, kernel, strides, padding, activation: f"Conv2D({filters}, {kernel}, "
                  f"strides={strides}, padding={padding}, activation={activation})", COUNTS, COUNTS, COUNTS,
                  PADDINGS, ACTIVATIONS),
        st.builds(lambda size, strides, padding: f"MaxPooling2D({size}, strides={strides}, padding={padding})",
                  COUNTS, COUNTS, PADDINGS),
        st.builds(lambda size, padding: f"AveragePooling2D({size}, padding={padding})", COUNTS, PADDINGS),
        st.sampled_from(["Flatten()", "GlobalAveragePooling2D()", "GlobalMaxPooling2D()", "BatchNormalization()"]),
        st.builds(lambda momentum, epsilon: f"BatchNormalization(momentum={momentum}, epsilon={epsilon})", RATES,
                  st.sampled_from(["1e-3", "0", "hp.Float('e', 0.5, 2.0)"])),
        st.builds(lambda rate, seed, name: f"Dropout({rate}, seed={seed}{name})", RATES,
                  st.sampled_from(["1", "0", "2**40"]), NAMES),
        st.builds(lambda shape: f"Reshape({shape})",
                  st.sampled_from(["(64,)", "(8, 8, 1)", "(-1,)", "(4, 16)", "(7,)", "()", "(0,)", "(-1, -1)"])),
        st.builds(lambda slope: f"LeakyReLU({slope})", st.sampled_from(["0.1", "0", "-1", "'x'"])),
        st.builds(lambda activation: f"Activation({activation})", ACTIVATIONS),
    )  # fmt: skip


SHAPES = st.sampled_from(["(8, 8)", "(8, 8, 1)", "(8, 8, 3)", "(1, 1)", "(3, 40, 1)"])
TRAINING = st.sampled_from(
    ["epochs=1", "epochs=1, batch_size=hp.Choice('bs', [16, 32])", "epochs=1, learning_rate=hp.Float('lr', 1e-4, 0.1)",
     "epochs=1, optimizer='sgd'", "epochs=1, optimizer='nope'", "epochs=0", "epochs=1, learning_rate=0"]
)  # fmt: skip

DEFINITION = """
    from buildsys.dsl import *

    model(
        name="fuzzed",
        data=datasets.sklearn_digits(),
        inputs=image_input("image", shape={shape}),
        layers=[{layers}Flatten(), Dense(10, activation="softmax")],
        train=train({training}),
    )
"""


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layers=st.lists(_layer(), max_size=5), shape=SHAPES, training=TRAINING)
@example(layers=["LeakyReLU(-1)"], shape="(8, 8)", training="epochs=1")  # was accepted, and refused by Keras
def test_a_definition_loads_and_compiles_or_fails_at_its_line(
    workspace: Path, layers: list[str], shape: str, training: str
) -> None:
    stack = "".join(f"{layer}, " for layer in layers)
    write_definition(workspace, "fuzzed.py", DEFINITION.format(shape=shape, layers=stack, training=training))
    try:
        loaded = Workspace(workspace)
    except DefinitionError as error:
        message = str(error)
        assert "\n" not in message and "fuzzed.py:" in message, message
        return
    spec = loaded.targets["//model_defs:fuzzed"].spec
    hparams = spec.default_hparams()
    model = compile_model(build_model(spec, hparams), spec, hparams)
    assert tuple(model.output_shape) == (None, 10)
