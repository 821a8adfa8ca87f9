"""Serving: load a run's artifacts and predict."""

from bigmodel.serve.predictor import Predictor

__all__ = ["Predictor"]
