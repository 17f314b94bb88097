"""The HTTP/REST front end: the Open Inference Protocol over HTTP/JSON with Triton's extensions.

``codec`` turns bodies into the data plane's values and back, ``app`` is the ASGI application (routes, token,
errors → HTTP status), ``server`` runs it with uvicorn on the server's event loop. Nothing about models lives here.
"""
