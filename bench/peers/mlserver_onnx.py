"""A Seldon MLServer 1.7.1 runtime for one ONNX file on onnxruntime: the peer bench/serve_bench.py measures as
"mlserver".

Runs in bench/.venvs/mlserver (bench/peers/setup.sh); bench/serve_bench.py writes the settings.json
(`parallel_workers: 0`, loopback) and each model's model-settings.json (`implementation:
mlserver_onnx.OnnxModel`, `parameters.uri` = the ONNX file, adaptive batching on through `max_batch_size` and
`max_batch_time`). MLServer ships no ONNX runtime of its own; this is the custom `MLModel` its documentation
describes: decode the request's tensors with NumpyCodec, one `InferenceSession.run`, encode the outputs.
"""

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


class OnnxModel(MLModel):
    """One ONNX file behind MLServer's data plane; MLServer's adaptive batcher merges requests before predict."""

    async def load(self) -> bool:
        device = (self.settings.parameters.extra or {}).get("device", "cpu")
        self._session = ort.InferenceSession(self.settings.parameters.uri, providers=PROVIDERS[device])
        if device == "cuda" and "CUDAExecutionProvider" not in self._session.get_providers():
            raise RuntimeError(f"CUDA was asked for, ONNX Runtime runs on {self._session.get_providers()}")
        self._output_names = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        values = self._session.run(self._output_names, feeds)
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output(name, value) for name, value in zip(self._output_names, values, strict=True)
            ],
        )
