"""Serving: load a run's artifacts and predict, in process (``Predictor``) or over HTTP.

``Predictor`` is imported eagerly; the HTTP side (``create_app``, ``serve``, ``ServeSettings``,
``build_card``, ``load_api_keys``) loads on first use, so ``import bigmodel`` needs no web framework
(FastAPI and uvicorn are the ``serve`` extra).
"""

from __future__ import annotations

import importlib

from bigmodel.serve.predictor import Predictor

_LAZY = {
    "create_app": "bigmodel.serve.app",
    "serve": "bigmodel.serve.app",
    "ServeSettings": "bigmodel.serve.app",
    "build_card": "bigmodel.serve.app",
    "load_api_keys": "bigmodel.serve.auth",
}
__all__ = ["Predictor", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        try:
            module = importlib.import_module(_LAZY[name])
        except ModuleNotFoundError as exc:  # the web stack is an extra, not a core dependency
            from bigmodel.errors import UserError

            raise UserError(
                f"serve: the HTTP server needs the '{exc.name}' package, which is not installed: "
                "pip install 'bigmodel[serve]'."
            ) from None
        return getattr(module, name)
    raise AttributeError(f"module 'bigmodel.serve' has no attribute {name!r}")
