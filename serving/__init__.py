"""serving: answers Open Inference Protocol gRPC requests for the models in a buildsys output tree.

It reads only the output tree's files (manifest.json, config.pbtxt, model.onnx) and never imports TensorFlow,
keras or buildsys, so the serving process stays small and starts in a second or two.
"""

__version__ = "0.1.0"
