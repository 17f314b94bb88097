"""The Open Inference Protocol (KServe v2 / Triton) gRPC schema and its generated stubs.

Everything here except ``generate.py`` is generated; regenerate with ``python -m serving.protocol.generate``.
"""
