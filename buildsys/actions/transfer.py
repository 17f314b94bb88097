"""The transfer actions: build the base, featurise the data through it once, fit the head, fine-tune, compose.

The base is a `keras.applications` network (top removed, globally pooled, its own `preprocess_input` inside the
graph) or another target's published model rebuilt from its definition, loaded with its `model.weights.h5` and cut
at a named layer. With the base frozen, its features are computed once per base and data (cached as `.npz` under
`build-out/features/`, or read from the Parquet that `featurize --engine spark` wrote) and the head is fitted on
them — the base runs once per image, not once per epoch. Fine-tuning then unfreezes the base's top layers and
trains the whole graph at a lower learning rate. Whatever the mode, what comes out is ONE Keras model from raw
pixels to probabilities, so export and the parity check treat it like any other target.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from buildsys.actions import tensorflow
from buildsys.actions.compile import build_model, compile_model
from buildsys.actions.data import Splits, make_dataset
from buildsys.actions.numerics import configure
from buildsys.dsl.bases import (
    BASE_MODEL,
    FEATURES_LAYER,
    PRETRAINED_PREPROCESSING,
    STANDARDIZE_LAYER,
    Application,
    PretrainedBase,
)
from buildsys.dsl.specs import ModelSpec
from buildsys.errors import BuildsysError, DataError, WeightsUnavailableError, one_line
from buildsys.graph import Dependency
from buildsys.store import WEIGHTS_FILE, OutputTree, write_file_atomic
from buildsys.workspace import Target, Workspace

if TYPE_CHECKING:
    from buildsys.actions.checkpoints import TrainingCheckpoint
    from buildsys.build import Plan

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Features:
    """The base's output for each split's images, in the splits' order."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def keras_models_dir() -> Path:
    """Where Keras caches application weights: `$KERAS_HOME/models`, default `~/.keras/models`."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _application(base: PretrainedBase, size: tuple[int, int], load_weights: bool) -> Any:
    """The network without its top; ImageNet weights come from Keras' cache or a download, or from a file."""
    import keras

    constructor = getattr(keras.applications, base.application)
    weights: str | None = None
    if load_weights:
        path = base.weights_path()
        if path is not None and not path.is_file():
            raise WeightsUnavailableError(
                f"pretrained({base.application!r}, weights=...): {path} does not exist; give the weights of "
                f"{base.application} without its top (Keras names its file {base.info.weights_file})"
            )
        weights = "imagenet" if path is None else str(path)
    try:
        return constructor(include_top=False, weights=weights, input_shape=(*size, 3), pooling=base.pooling)
    except Exception as error:  # a failed download or an unreadable file: one line saying what to put where
        reason = one_line(error)
        if weights == "imagenet" and not (keras_models_dir() / base.info.weights_file).is_file():
            raise WeightsUnavailableError(
                f"{base.application} ImageNet weights are not on this machine and could not be downloaded "
                f"({reason}); put {base.info.weights_file} into {keras_models_dir()} "
                f"(or give pretrained({base.application!r}, weights=PATH))"
            ) from None
        raise BuildsysError(f"cannot load {base.application} weights from {weights}: {reason}") from None


def _preprocessing(application: Application) -> Any:
    """A layer that runs `keras.applications.<module>.preprocess_input` when the graph is traced.

    Called on a symbolic tensor, preprocess_input captures its channel means as eager constants, which tf2onnx
    turns into extra graph inputs; inside a layer's `call` they are created in the traced graph and stay constants.
    """
    import keras

    class ApplicationPreprocessing(keras.layers.Layer):
        def call(self, pixels: Any) -> Any:
            return getattr(keras.applications, application.module).preprocess_input(pixels)

    return ApplicationPreprocessing(name=application.layer_names[0])


def _pretrained_base(spec: ModelSpec, base: PretrainedBase, load_weights: bool) -> Any:
    """image → scale/offset → RGB → resize → the application's preprocess_input → network → pooled features."""
    import keras

    shape = tuple(spec.inputs.shape)
    height, width = shape[:2]
    size = base.input_size or (height, width)
    names = PRETRAINED_PREPROCESSING
    image = keras.Input(shape=shape, dtype=spec.inputs.dtype, name=spec.inputs.name)
    pixels = keras.layers.Rescaling(spec.inputs.scale, spec.inputs.offset, name=names["scale"])(image)
    if len(shape) == 2:
        pixels = keras.layers.Reshape((height, width, 1), name=names["channels"])(pixels)
    if len(shape) == 2 or shape[2] == 1:  # the networks were trained on colour: grey in all three channels
        pixels = keras.layers.Concatenate(name=names["rgb"])([pixels, pixels, pixels])
    if size != (height, width):
        pixels = keras.layers.Resizing(*size, name=names["resize"])(pixels)
    network = _application(base, size, load_weights)
    return keras.Model(image, network(_preprocessing(base.info)(pixels)), name=BASE_MODEL)


def _architecture(target: Target, dependencies: Sequence[Dependency], hparams: dict[str, Any], tree: OutputTree) -> Any:
    """The target's model as its definition builds it, with untrained (or unloaded) weights."""
    if target.spec.transfer is None:
        return build_model(target.spec, hparams)
    base = build_base(target, dependencies, tree, load_weights=False)
    return compose(target.spec, base, head_layers(target.spec))


def architecture(workspace: Workspace, tree: OutputTree, target: Target, hparams: dict[str, Any]) -> Any:
    """The composed model a transfer target's definition describes, untrained and with no weights loaded (for
    `compile`): pretrained networks are built without downloading, a target base from its latest version's
    hyperparameters."""
    from buildsys.schedule import walk

    walked = walk(workspace, [target], lambda dependency, inner: Dependency(dependency, "", inner))
    return _architecture(target, walked[target.label].dependencies, hparams, tree)


def published_model(dependency: Dependency, tree: OutputTree) -> Any:
    """A dependency's published model: rebuilt from its definition, with the weights of the version the scheduler
    resolved it to (built from exactly the content hash the dependent is keyed on)."""
    target = dependency.target
    if dependency.version is None:
        raise BuildsysError(f"{target.label} has no published version {dependency.content_hash[:12]}; build it first")
    folder = tree.model_dir(target.name) / str(dependency.version)
    if not (folder / WEIGHTS_FILE).is_file():
        raise BuildsysError(
            f"{target.label} version {dependency.version} has no {WEIGHTS_FILE} to build on; "
            f"rebuild it: python -m buildsys build {target.label} --force"
        )
    hparams = tree.manifest(target.name, dependency.version).hparams
    model = _architecture(target, dependency.dependencies, hparams, tree)
    model.load_weights(str(folder / WEIGHTS_FILE))
    return model


def build_base(target: Target, dependencies: Sequence[Dependency], tree: OutputTree, load_weights: bool = True) -> Any:
    """The base of a transfer target as a Keras model from the image input to a feature vector.

    Raises:
        WeightsUnavailableError: for pretrained weights that are neither here nor downloadable.
    """
    import keras

    spec = target.spec
    base = spec.transfer.base
    if isinstance(base, PretrainedBase):
        return _pretrained_base(spec, base, load_weights)
    (dependency,) = dependencies
    if load_weights:
        source = published_model(dependency, tree)
    else:
        manifest = tree.latest_manifest(dependency.target.name)
        hparams = manifest.hparams if manifest else {}
        source = _architecture(dependency.target, dependency.dependencies, hparams, tree)
    features = source.get_layer(base.layer).output
    if len(features.shape) > 2:
        features = keras.layers.Flatten(name=_unused_name("flatten_features", source))(features)
    return keras.Model(source.inputs, features, name=BASE_MODEL)


def _unused_name(name: str, model: Any) -> str:
    """`name`, or it with the first free numeric suffix: a layer added to a dependency's graph must not take the
    name of one of its layers, which the dependency's definition was free to choose (Keras refuses duplicates)."""
    taken = {layer.name for layer in model.layers}
    candidates = itertools.chain([name], (f"{name}_{number}" for number in itertools.count(1)))
    return next(candidate for candidate in candidates if candidate not in taken)


def head_layers(spec: ModelSpec) -> list[Any]:
    """Standardisation, the hidden layers of an MLP head, and the elastic-net regularised softmax.

    Standardisation is a frozen BatchNormalization without centre or scale: its moving mean and variance are set
    to the training features' (`standardize`) and kept as variables, so they are saved with the weights and become
    constants in ONNX (Keras' Normalization layer keeps adapted statistics as captured tensors, which tf2onnx
    turns into extra graph inputs).
    """
    import keras

    head = spec.transfer.head
    penalty = keras.regularizers.L1L2(l1=head.l1, l2=head.l2) if head.reg_param > 0 else None
    standardize = keras.layers.BatchNormalization(center=False, scale=False, name=STANDARDIZE_LAYER)
    standardize.trainable = False
    layers: list[Any] = [standardize]
    for index, (units, name) in enumerate(zip(head.units, head.hidden_layer_names(), strict=True), start=1):
        layers.append(keras.layers.Dense(units, activation=head.activation, kernel_regularizer=penalty, name=name))
        if head.dropout:
            layers.append(keras.layers.Dropout(head.dropout, name=head.dropout_layer_name(index)))
    classes = len(spec.class_names)
    layers.append(keras.layers.Dense(classes, activation="softmax", kernel_regularizer=penalty, name=spec.output_name))
    return layers


def standardize(layer: Any, features: np.ndarray) -> None:
    """Sets the standardisation layer's statistics to those of the training features."""
    layer.moving_mean.assign(features.mean(axis=0))
    layer.moving_variance.assign(features.var(axis=0))


def compose(spec: ModelSpec, base: Any, layers: list[Any]) -> Any:
    """ONE model from raw pixels to probabilities: the base (in inference mode, so batch statistics never move),
    its output named `features`, then the head's layers."""
    import keras

    image = keras.Input(shape=spec.inputs.shape, dtype=spec.inputs.dtype, name=spec.inputs.name)
    tensor = keras.layers.Identity(name=FEATURES_LAYER)(base(image, training=False))
    for layer in layers:
        tensor = layer(tensor)
    return keras.Model(image, tensor, name=spec.name)


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    write_file_atomic(path, lambda stream: np.savez(stream, **arrays))


def read_parquet_features(folder: Path, sizes: dict[str, int]) -> Features:
    """Features written by `featurize --engine spark`: rows of (split, index, features), in any order."""
    import pyarrow.parquet as parquet

    table = parquet.read_table(folder, columns=["split", "index", "features"]).to_pandas()
    arrays = {}
    for split in SPLITS:
        rows = table[table["split"] == split].sort_values("index")
        if len(rows) != sizes[split] or not (rows["index"].to_numpy() == np.arange(sizes[split])).all():
            raise DataError(f"{folder}: holds {len(rows)} {split} rows, the data has {sizes[split]}; featurize again")
        # an empty split (validation_split=0) is stored as zero rows, as the local featuriser stores it
        arrays[split] = (
            np.stack(rows["features"].to_numpy()).astype(np.float32) if len(rows) else np.zeros((0, 0), np.float32)
        )
    return Features(arrays["train"], arrays["validation"], arrays["test"])


def featurise(base: Any, splits: Splits, path: Path, say: Callable[[str], None]) -> Features:
    """The base's features for every split: from the cache when there, else computed once and cached."""
    sizes = {"train": len(splits.x_train), "validation": len(splits.x_val), "test": len(splits.x_test)}
    parquet_folder = path.with_suffix(".parquet")
    if path.is_file():
        with np.load(path, allow_pickle=False) as cached:
            if all(split in cached and len(cached[split]) == size for split, size in sizes.items()):
                say(f"features from {path}")
                return Features(cached["train"], cached["validation"], cached["test"])
    if parquet_folder.is_dir():
        say(f"features from {parquet_folder}")
        return read_parquet_features(parquet_folder, sizes)
    images = {"train": splits.x_train, "validation": splits.x_val, "test": splits.x_test}
    arrays = {
        split: base.predict(x, batch_size=64, verbose=0).astype(np.float32) if len(x) else np.zeros((0, 0), np.float32)
        for split, x in images.items()
    }
    _save_npz_atomic(path, arrays)
    say(f"features cached in {path}")
    return Features(arrays["train"], arrays["validation"], arrays["test"])


def _weighted_layers(model: Any) -> list[Any]:
    """Every layer holding weights, nested models flattened, in graph order."""
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            found.extend(_weighted_layers(layer))
        elif layer.weights:
            found.append(layer)
    return found


def unfreeze_top(base: Any, count: int) -> list[str]:
    """Makes the base's top `count` weighted layers trainable (batch normalisation stays frozen); their names."""
    import keras

    base.trainable = True
    weighted = _weighted_layers(base)
    for layer in weighted:
        layer.trainable = False
    chosen = [layer for layer in weighted if not isinstance(layer, keras.layers.BatchNormalization)][-count:]
    for layer in chosen:
        layer.trainable = True
    return [layer.name for layer in chosen]


def train_transfer(
    plan: Plan,
    splits: Splits,
    tree: OutputTree,
    action: Callable[[str], AbstractContextManager[None]],
    say: Callable[[str], None],
    verbose: int,
    checkpoint: TrainingCheckpoint,
) -> tuple[Any, Any, dict[str, list[float]]]:
    """Builds the base (a dependency read from `tree` at the version the plan names), fits the head on the
    features cached at the plan's features path, fine-tunes if asked, and composes the model.

    Fine-tuning, which runs the base on every image, saves `checkpoint` after each epoch (the composed model, its
    optimizer, and the head's and fine-tuning's history so far); a build run again resumes after the last saved
    epoch without fitting the head again, since the checkpoint holds the head's weights. The head's own fit, on
    cached features, is short and is not checkpointed.

    Returns the composed model compiled for `evaluate`, the (default) strategy it ran under, and the training
    history (fine-tuning epochs under `fine_tune_*` names).

    Raises:
        BuildInterrupted: on Ctrl-C while fine-tuning, saying which epochs are kept and how to resume.
    """
    import keras

    from buildsys.actions.checkpoints import BuildInterrupted, EpochCheckpoint, EpochProgress, interrupted_message

    tf = tensorflow()
    spec, seed, hparams = plan.spec, plan.seed, plan.hparams
    if not isinstance(splits, Splits):
        raise DataError(f"{plan.label}: transfer targets featurise in-memory data; this source streams")
    keras.utils.set_random_seed(seed)
    configure(mixed_precision=False, deterministic=plan.options.deterministic)
    with action("compile"):
        base = build_base(plan.target, plan.dependencies, tree)
        base.trainable = False
        layers = head_layers(spec)
    with action("featurise"):
        features = featurise(base, splits, plan.paths.features, say)
    with action("train"):
        feature_input = keras.Input(shape=features.train.shape[1:], name="features")
        tensor = feature_input
        for layer in layers:
            tensor = layer(tensor)
        head = compile_model(keras.Model(feature_input, tensor, name="head"), spec, hparams)
        standardize(layers[0], features.train)
        fine = spec.transfer.fine_tune
        history: dict[str, list[float]] = {}
        if fine is not None and checkpoint.state() is not None:
            say(f"the head was fitted before fine-tuning began; its weights are in {checkpoint.folder}")
        else:
            validation = (features.validation, splits.y_val) if len(splits.y_val) else None
            fitted = head.fit(
                features.train,
                splits.y_train,
                validation_data=validation,
                epochs=spec.train.epochs,
                batch_size=spec.train.batch_size,
                shuffle=True,
                verbose=0,  # EpochProgress: one line per epoch, Keras' bar on a terminal
                callbacks=[EpochProgress(say, spec.train.epochs, bar=verbose == 1)],
            )
            history = {name: [float(v) for v in values] for name, values in fitted.history.items()}
    model = compose(spec, base, layers)
    if fine is not None:
        with action("fine-tune"):
            unfrozen = unfreeze_top(base, fine.layers)
            say(f"fine-tuning {', '.join(unfrozen)} at learning rate {fine.learning_rate:g}")
            optimizer = keras.optimizers.get(spec.train.optimizer)
            optimizer.learning_rate = fine.learning_rate
            model.compile(optimizer=optimizer, loss=spec.train.loss, metrics=list(spec.train.metrics))
            initial_epoch, restored = checkpoint.restore(model)
            if initial_epoch:
                history = restored
                say(f"resuming fine-tuning after epoch {initial_epoch}/{fine.epochs} from {checkpoint.folder}")
            train_data = make_dataset(
                splits.x_train,
                splits.y_train,
                spec.train.batch_size,
                shuffle_buffer=spec.train.shuffle_buffer,
                seed=seed,
            )
            validation_data = (
                make_dataset(splits.x_val, splits.y_val, spec.train.batch_size) if len(splits.x_val) else None
            )
            callbacks = [EpochCheckpoint(checkpoint, history, prefix="fine_tune_"),
                         EpochProgress(say, fine.epochs, bar=verbose == 1)]  # fmt: skip
            try:
                model.fit(
                    train_data,
                    validation_data=validation_data,
                    epochs=fine.epochs,
                    initial_epoch=initial_epoch,
                    verbose=0,
                    shuffle=False,  # make_dataset shuffles; Keras warns when asked to shuffle a tf.data.Dataset
                    callbacks=callbacks,
                )
            except KeyboardInterrupt:
                raise BuildInterrupted(interrupted_message(checkpoint, fine.epochs)) from None
        history = callbacks[0].history
    model.compile(loss=spec.train.loss, metrics=list(spec.train.metrics))
    return model, tf.distribute.get_strategy(), history
