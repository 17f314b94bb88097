"""Engines that run published ONNX models at scale (`predict --engine ...`, `featurize --engine ...`).

The local engine is ONNX Runtime in this process (`buildsys.batch.predict`); `spark` runs the same model on Apache
Spark. Each engine is an optional module that the commands import only when asked for it.
"""
