"""Batch jobs over data and published models: `predict`, `data import` and `data inspect`.

They read sources (`buildsys.sources`) and the output tree, and write files or database tables one whole batch at
a time. None of them imports TensorFlow: predictions run the published `model.onnx` in ONNX Runtime.
"""
