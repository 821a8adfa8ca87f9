"""Tasks: what a record means, the head, the loss, the metrics, and what a person reads back.

``task: {name: NAME}`` in a recipe names one of :data:`TASKS` or a user's own ``package.module:Class``
(a subclass of :class:`Task`, or any class with the same methods).
"""

from __future__ import annotations

from pathlib import Path

from bigmodel.errors import RecipeError, RunDirError, UserError, unknown_name
from bigmodel.tasks.audio_classification import AudioClassificationTask
from bigmodel.tasks.base import TASK_FORMAT, Metric, Task, load_object
from bigmodel.tasks.causal_lm import CausalLMTask
from bigmodel.tasks.classification import ClassificationTask
from bigmodel.tasks.face_verification import FaceVerificationTask
from bigmodel.tasks.image_classification import ImageClassificationTask
from bigmodel.tasks.image_generation import ImageGenerationTask
from bigmodel.tasks.masked_lm import MaskedLMTask
from bigmodel.tasks.object_detection import ObjectDetectionTask
from bigmodel.tasks.question_answering import QuestionAnsweringTask
from bigmodel.tasks.regression import RegressionTask
from bigmodel.tasks.semantic_role_labeling import SemanticRoleLabelingTask
from bigmodel.tasks.semantic_segmentation import SemanticSegmentationTask
from bigmodel.tasks.seq2seq import Seq2SeqTask
from bigmodel.tasks.speech_recognition import SpeechRecognitionTask
from bigmodel.tasks.text_classification import TextClassificationTask
from bigmodel.tasks.text_to_speech import TextToSpeechTask
from bigmodel.tasks.token_classification import TokenClassificationTask

TASKS: dict[str, type[Task]] = {
    "causal_lm": CausalLMTask,
    "classification": ClassificationTask,
    "regression": RegressionTask,
    "text_classification": TextClassificationTask,
    "token_classification": TokenClassificationTask,
    "masked_lm": MaskedLMTask,
    "question_answering": QuestionAnsweringTask,
    "seq2seq": Seq2SeqTask,
    "semantic_role_labeling": SemanticRoleLabelingTask,
    "image_classification": ImageClassificationTask,
    "semantic_segmentation": SemanticSegmentationTask,
    "face_verification": FaceVerificationTask,
    "image_generation": ImageGenerationTask,
    "object_detection": ObjectDetectionTask,
    "audio_classification": AudioClassificationTask,
    "speech_recognition": SpeechRecognitionTask,
    "text_to_speech": TextToSpeechTask,
}


def task_class(name: str) -> type[Task]:
    """The task class a recipe's ``task.name`` names: built-in, or ``package.module:Class``."""
    if name in TASKS:
        return TASKS[name]
    if ":" not in name:
        raise unknown_name("task.name", name, [*TASKS, "package.module:Class"])
    cls = load_object(name, "task.name")
    if not isinstance(cls, type) or not all(hasattr(cls, m) for m in ("encode", "collate", "loss", "metric")):
        raise RecipeError(
            f"task.name: {name!r} is not a task class (see bigmodel.tasks.Task for the contract)."
        )
    return cls


def create_task(recipe) -> Task:
    """The (unfitted) task of a recipe, with its options validated."""
    return task_class(recipe.task.name).from_recipe(recipe)


def restore_task(state: dict, run_dir: Path) -> Task:
    """The fitted task of a run directory, from task.json (and files beside it).

    Raises:
        RunDirError: naming task.json and the key that is missing or of the wrong type, or the
            task's own complaint about its state (or the files it saved beside task.json).
    """
    where = Path(run_dir) / "task.json"
    if not isinstance(state, dict):
        raise RunDirError(f"{where}: damaged: expected a JSON object, found {type(state).__name__}.")
    if state.get("format") != TASK_FORMAT:
        raise RunDirError(
            f"{where}: format {state.get('format')!r}; this version of bigmodel reads format {TASK_FORMAT}. "
            "Retrain the run with this version."
        )
    # ``class`` is what was trained; a built-in ``name`` stands for it only when they agree (a user's
    # subclass of a built-in task inherits its name, and must be restored as itself).
    name, spec = state.get("name"), state.get("class")
    if name in TASKS and spec in (None, _qualified(TASKS[name])):
        spec = name
    if not isinstance(spec, str) or not spec:
        raise RunDirError(f"{where}: damaged: 'name' and 'class' do not name a task (found {spec!r}).")
    try:
        cls = task_class(spec)
    except RecipeError as exc:
        raise RunDirError(f"{where}: names the task {spec!r}, which cannot be loaded: {exc}") from None
    check_state(cls, state, where)
    try:
        return cls.restore(state, Path(run_dir))
    except RunDirError:
        raise
    except UserError as exc:
        raise RunDirError(f"{where}: the task cannot be restored: {exc}") from None
    except KeyError as exc:
        raise RunDirError(f"{where}: damaged: missing key {exc.args[0]!r} that the task needs.") from None
    except Exception as exc:  # what restoring code makes of a damaged file (tokenizers raise Exception)
        raise RunDirError(
            f"{where}: damaged: the task cannot be restored from it and the files saved beside it "
            f"({type(exc).__name__}: {exc})."
        ) from None


def check_state(cls: type, state: dict, where: Path) -> None:
    """Every key of ``state_types`` (merged over ``cls``'s hierarchy) present with its JSON type."""
    types: dict = {}
    for klass in reversed(cls.__mro__):
        types |= getattr(klass, "state_types", None) or {}
    for key, kind in types.items():
        if key not in state:
            raise RunDirError(f"{where}: damaged: missing key {key!r} that the {cls.__name__} task needs.")
        value = state[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
            raise RunDirError(
                f"{where}: damaged: {key!r} should be {expected}, found {type(value).__name__} {value!r:.60}."
            )


def _qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true/false"}  # fmt: skip


__all__ = ["TASKS", "ClassificationTask", "Metric", "RegressionTask", "Task", "TextClassificationTask",
           "check_state", "create_task", "restore_task", "task_class"]  # fmt: skip
