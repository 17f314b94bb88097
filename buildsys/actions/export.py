"""The export action: one serving function, written as a SavedModel and as ONNX.

Both artifacts come from the same `tf.function` (`image` → `{"probabilities": ...}`), so their names agree: the
SavedModel's `serving_default` signature and the ONNX graph's input and output. The ONNX opset is set explicitly
(Keras' own default is 15) and the batch dimension is dynamic and named `batch`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from buildsys.actions import tensorflow
from buildsys.dsl.specs import ModelSpec

SAVEDMODEL_DIR = "model.savedmodel"
ONNX_FILE = "model.onnx"
DATATYPES = {"uint8": "UINT8", "float32": "FP32"}


def serving_function(model: Any, spec: ModelSpec) -> Any:
    tf = tensorflow()
    signature = [tf.TensorSpec([None, *spec.inputs.shape], spec.inputs.dtype, name=spec.inputs.name)]

    @tf.function(input_signature=signature)
    def serve(image: Any) -> dict[str, Any]:
        return {spec.output_name: model(image, training=False)}

    return serve


def _name_batch_dimension(model_proto: Any) -> None:
    """tf2onnx names unknown dimensions `unk__N`; the batch axis of every input and output is called `batch`."""
    for value in (*model_proto.graph.input, *model_proto.graph.output):
        first = value.type.tensor_type.shape.dim[0]
        first.ClearField("dim_value")
        first.dim_param = "batch"


def export(model: Any, spec: ModelSpec, destination: Path) -> dict[str, Any]:
    """Writes `model.savedmodel/` and `model.onnx` into `destination`; returns the tensor descriptions."""
    import keras
    import onnx
    import tf2onnx

    serve = serving_function(model, spec)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)
    archive.write_out(str(destination / SAVEDMODEL_DIR), verbose=False)

    model_proto, _ = tf2onnx.convert.from_function(
        serve, input_signature=serve.input_signature, opset=spec.export.opset
    )
    _name_batch_dimension(model_proto)
    model_proto.doc_string = f"buildsys target {spec.name}"
    onnx.checker.check_model(model_proto, full_check=True)
    onnx.save_model(model_proto, str(destination / ONNX_FILE))
    return {
        "inputs": [
            {
                "name": spec.inputs.name,
                "datatype": DATATYPES[spec.inputs.dtype],
                "shape": [-1, *spec.inputs.shape],
            }
        ],
        "outputs": [{"name": spec.output_name, "datatype": "FP32", "shape": [-1, len(spec.class_names)]}],
        "opset": spec.export.opset,
    }
