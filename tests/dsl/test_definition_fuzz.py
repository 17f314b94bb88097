"""Definitions fuzzed: random layer stacks with arguments good and bad (hyperparameters among them), over several
input shapes and training settings. A definition either fails to load with one line at its file and line, or
loads and compiles in Keras to the declared output: what the definition language accepts, Keras builds (the
language's checks and shape inference agree with Keras, so a mistake never surfaces later, mid-build)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from buildsys.actions.compile import build_model, compile_model
from buildsys.errors import DefinitionError
from buildsys.workspace import Workspace
from tests.conftest import fuzz_settings, write_definition

COUNTS = st.sampled_from(
    ["0", "1", "2", "3", "5", "8", "-1", "True", "2.5", "'3'", "(2, 2)", "(3, 1)", "(0, 2)", "[2, 2]", "None", "10**9",
     "(9, 9)", "hp.Int('u', 1, 64)", "hp.Int('u', 0, 4)", "hp.Choice('c', [8, 16])"]
)  # fmt: skip
ACTIVATIONS = st.sampled_from(["'relu'", "'softmax'", "'nope'", "None", "3", "hp.Choice('a', ['relu', 'tanh'])"])
PADDINGS = st.sampled_from(["'same'", "'valid'", "'full'", "1"])
RATES = st.sampled_from(["0.5", "1.0", "0", "-0.1", "'x'", "2", "hp.Float('r', 0.0, 0.9)", "hp.Float('r', 0.5, 2.0)"])
NAMES = st.sampled_from(
    ["", ", name='a'", ", name='b'", ", name='dense'", ", name='dense_1'", ", name='flatten'", ", name='image'",
     ", name='preprocess'", ", name='probabilities'", ", name=''", ", name='a b'", ", name=None"]
)  # fmt: skip
INPUT_NAMES = st.sampled_from(["'image'", "'pixels'", "'probabilities'", "'preprocess'", "'dense'", "'class'", "'x y'"])
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
        inputs=image_input({input_name}, shape={shape}),
        layers=[{layers}Flatten(), Dense(10, activation="softmax"{last_name})],
        train=train({training}),
    )
"""


@fuzz_settings(100)
@given(layers=st.lists(_layer(), max_size=5), shape=SHAPES, training=TRAINING, input_name=INPUT_NAMES, last_name=NAMES)
# Each was accepted, and refused by Keras at build time: a negative slope, two layers of one name, an input named
# as a layer.
@example(layers=["LeakyReLU(-1)"], shape="(8, 8)", training="epochs=1", input_name="'image'", last_name="")
@example(layers=["Dense(4)", "Dense(4, name='dense')"], shape="(8, 8)", training="epochs=1", input_name="'image'",
         last_name="")  # fmt: skip
@example(layers=[], shape="(8, 8)", training="epochs=1", input_name="'probabilities'", last_name="")
def test_a_definition_loads_and_compiles_or_fails_at_its_line(
    workspace: Path, layers: list[str], shape: str, training: str, input_name: str, last_name: str
) -> None:
    stack = "".join(f"{layer}, " for layer in layers)
    text = DEFINITION.format(shape=shape, layers=stack, training=training, input_name=input_name, last_name=last_name)
    write_definition(workspace, "fuzzed.py", text)
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


SEEDS = st.sampled_from(["0", "7", "-1", "2**70", "'x'", "1.5", "None", "True", "hp.Int('s', 0, 3)"])
DATA = st.one_of(
    st.builds(lambda fraction, seed: f"datasets.sklearn_digits(test_fraction={fraction}, split_seed={seed})",
              st.sampled_from(["0.2", "0.5", "0.999", "0", "1.0", "1", "-0.2", "'0.2'", "None"]), SEEDS),
    st.builds(lambda size, mode, split, seed, names, stream: f"datasets.image_folder('data/digits', "
              f"image_size={size}, color_mode={mode}, split={split}, split_seed={seed}, class_names={names}, "
              f"stream={stream})",
              st.sampled_from(["(8, 8)", "(4, 16)", "(0, 8)", "(8,)", "8", "(8.0, 8)", "(100000, 100000)"]),
              st.sampled_from(["'grayscale'", "'rgb'", "'cmyk'", "None"]),
              st.sampled_from(["0.25", "0.5", "0.01", "'folders'", "0", "1.5", "None"]), SEEDS,
              st.sampled_from(["None", "['a', 'b', 'c']", "[]", "['a', 'a', 'b']", "[1, 2, 3]", "'abc'"]),
              st.sampled_from(["False", "True", "1"])),
)  # fmt: skip

DATA_DEFINITION = """
    from buildsys.dsl import *

    model(
        name="fuzzed",
        data={data},
        inputs=image_input("image", shape=(8, 8)),
        layers=[Flatten(), Dense(3, activation="softmax")],
        train=train(epochs=1),
    )
"""


@fuzz_settings(100)
@given(data=DATA)
def test_a_data_declaration_loads_or_fails_at_its_line_or_in_one_data_error(workspace: Path, data: str) -> None:
    """Whatever a declaration's arguments, the build meets one DefinitionError at its line, or one DataError when
    the data does not fit the model (three classes, 8 × 8 grayscale), or splits it can train on."""
    from buildsys import sources
    from buildsys.actions.data import check_and_split
    from buildsys.errors import DataError
    from tests.data_helpers import digits, write_folder

    folder = workspace / "data" / "digits"
    if not folder.exists():
        images, labels = digits(30)
        write_folder(folder, images, labels % 3, class_names=["a", "b", "c"])
    write_definition(workspace, "fuzzed.py", DATA_DEFINITION.format(data=data))
    try:
        spec = Workspace(workspace).targets["//model_defs:fuzzed"].spec
        splits = check_and_split(sources.load(spec.data, None), spec, spec.train.seed)
    except DefinitionError as error:
        assert "\n" not in str(error) and "fuzzed.py:" in str(error), error
        return
    except DataError as error:
        assert "\n" not in str(error), error
        return
    assert splits.x_test.shape[1:] == (8, 8) and len(splits.x_test) == len(splits.y_test) > 0
