"""bigmodel: one readable PyTorch toolkit for the whole life of a neural model.

``import bigmodel`` is cheap: torch loads on first use of a function that needs it, so the CLI's
``--help`` answers at once.
"""

from __future__ import annotations

import importlib

# The stage packages are bigmodel.training and bigmodel.evaluation, so the API functions train and
# evaluate shadow no subpackage: `import bigmodel.evaluation.metrics` works beside bigmodel.evaluate().

__version__ = "0.1.0"

_LAZY = {
    "load_recipe": "bigmodel.pipeline",
    "load": "bigmodel.pipeline",
    "fit": "bigmodel.pipeline",
    "export_pretrained": "bigmodel.pipeline",
    "export_data": "bigmodel.pipeline",
    "report": "bigmodel.pipeline",
    "compress_run": "bigmodel.pipeline",  # bigmodel.compress is the compress/ package
    "open_run": "bigmodel.rundir",
    "Run": "bigmodel.rundir",
    "Task": "bigmodel.tasks",
    "Predictor": "bigmodel.serve",
    "create_model": "bigmodel.models.registry",
    "from_pretrained": "bigmodel.hub.pretrained",
    "save_pretrained": "bigmodel.hub.pretrained",
    "load_tokenizer": "bigmodel.data.tokenizers",
    "generate": "bigmodel.models.generate",
    "beam_search": "bigmodel.models.generate",
    "UserError": "bigmodel.errors",
}
__all__ = sorted([*_LAZY, "train", "evaluate"])


def train(recipe, output="runs", resume=None, progress=True, **overrides):
    """Train a recipe end to end and evaluate it on its validation and test splits.

    Args:
        recipe: a YAML path, a shipped recipe name (``"digits-cnn"``), a dict or a Recipe.
        output: parent folder of run directories (``output/<recipe name>/<timestamp>``).
        resume: an interrupted run directory to continue exactly where its last checkpoint left off.
        progress: show progress (a bar on a terminal, plain lines otherwise).
        **overrides: recipe overrides, nested (``train={"epochs": 2}``) or dotted
            (``**{"train.epochs": 2}``).

    Returns:
        Run: ``run.path`` (the run directory) and ``run.metrics`` (train/validation/test figures).
    """
    from bigmodel.pipeline import train as _train

    return _train(recipe, output=output, resume=resume, progress=progress, **overrides)


def evaluate(run, split="test", model=None, data=None):
    """Evaluate a trained run on one split of its data, or on another source; also recorded in the
    run's ``eval.json`` (another source's metrics under ``"SOURCE (split)"``).

    Args:
        run: a Run or a run directory.
        split: ``train``, ``validation`` or ``test``.
        model: your own module, for a run made by :func:`fit` on one.
        data: another source with the columns the run's recipe names (``builtin:NAME``,
            ``csv:FILE``, ``audio:FOLDER``...): its own ``split`` if it has splits, else all of it.

    Returns:
        dict: accuracy, macro precision/recall/F1, per-class table and confusion matrix
        (classification) or MSE/RMSE/MAE/R² (regression), plus the loss.
    """
    from bigmodel.pipeline import evaluate as _evaluate

    return _evaluate(run, split, model=model, data=data)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bigmodel' has no attribute {name!r}")


def __dir__():
    return __all__
