"""Knowledge distillation: a student of any family learns from the frozen trained model (the teacher).

The student trains with ``bigmodel.training.loop.fit`` on :class:`DistillationTask`, a wrapper whose
``loss(model, batch)`` is, SUMMED over the batch's items as every task loss is (the loop divides by
``num_items``)::

    alpha * T² * Σ_items KL(softmax(teacher / T) || softmax(student / T))    (Hinton et al. 2015)
    + (1 - alpha) * task.loss(student, batch)                                 (the hard labels)
    + hidden_weight * Σ_items mean_d (P h_student - h_teacher)²               (optional, ``hidden``)

Which outputs are logits is read from what ``task.forward`` returns, with no task names: a floating
tensor (or the first field of a tuple of outputs, e.g. token classification's emissions) whose last
dimension holds K >= 2 class scores, and whose items are either its rows — ``(num_items, K)``, one
row per example (classification of rows, texts, images, audio; masked LM's scored positions) — or
the positions where ``batch["labels"] != -100`` (PyTorch's ignore index: tagging, causal LM,
seq2seq), counted to equal ``num_items``. Anything else (regression's single output, detection's
dicts) is refused before training starts, naming the task.

Hidden-state matching compares the input of each model's ``head`` (the features the task's head
reads: FeatureModel's backbone features, a text model's pooled or per-token states), the one hidden
state every task model exposes by the same name; a learned linear projection maps the student's
width onto the teacher's when they differ (trained with the student, dropped afterwards).
Intermediate layers are not matched: families expose no per-layer states under one contract.

The teacher is never part of the module the loop trains (so a later DDP/FSDP wrapper never sees
it): it is held by the wrapper task, in eval mode, without gradients, run under ``no_grad``.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from bigmodel.compress.options import describe, parse_stage_options
from bigmodel.compress.stages import StageOutput
from bigmodel.data.loader import to_device
from bigmodel.errors import RecipeError, RunDirError, UserError
from bigmodel.models.registry import get_family
from bigmodel.recipe.schema import TrainConfig
from bigmodel.tasks.base import Task
from bigmodel.training.loop import fit
from bigmodel.training.validate import resolve_device

IGNORE_INDEX = -100  # PyTorch's ignore_index: positions no loss counts
PROBE_EXAMPLES = 4  # train examples checked through both models before training starts


class StudentOptions(BaseModel):
    """``arch`` names a registered family (or ``package.module:Name``); every other key is its config."""

    model_config = ConfigDict(extra="allow")
    arch: str

    def config(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    student: StudentOptions = Field(description="the student: {arch: FAMILY, ...its config}")
    temperature: float = Field(4.0, gt=0.0, description="softens both distributions; the KD term is × T²")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the KD term; 1 - alpha on the task loss")
    hidden: bool = Field(False, description="also match the features each model's head reads")
    hidden_weight: float = Field(1.0, gt=0.0, description="weight of the hidden-state term")
    train: dict[str, Any] = Field(
        default_factory=dict, description="overrides of the run's train section for the student"
    )

    @field_validator("train")
    @classmethod
    def _valid_train_keys(cls, value: dict) -> dict:
        try:  # unknown keys and bad values named now; merged over the run's in apply
            TrainConfig(**value)
        except ValidationError as exc:
            raise ValueError(describe(exc, "", TrainConfig).lstrip(".")) from None
        return value


def parse_options(options: dict, where: str) -> Options:
    """Validate a ``distill`` stage's options; errors name ``{where}.<field>``, the value and the rule."""
    return parse_stage_options(Options, options, where)


# --- the losses -------------------------------------------------------------------------------------


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² Σ_items KL(softmax(teacher/T) || softmax(student/T))`` for logits ``(N, K)``: a SUM over the
    N items (T² keeps the gradients' scale independent of T, as Hinton et al. advise)."""
    log_p_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="sum")
    return kl * temperature**2


def hidden_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``Σ_items mean_d (student - teacher)²`` for features ``(N, D)`` (student already projected)."""
    return (student.float() - teacher.float()).pow(2).mean(dim=-1).sum()


def output_logits(outputs: Any) -> torch.Tensor | None:
    """The logits in what ``task.forward`` returned: the tensor itself, or a tuple's first field."""
    if isinstance(outputs, tuple) and outputs:
        outputs = outputs[0]
    if isinstance(outputs, torch.Tensor) and outputs.is_floating_point() and outputs.dim() >= 2:
        return outputs
    return None


def item_mask(logits: torch.Tensor, batch: dict) -> torch.Tensor | None:
    """Which leading positions of ``logits (..., K)`` are the batch's items (see the module docstring):
    None = every row of a ``(num_items, K)`` tensor; a boolean mask from ``labels != -100``; raises
    ValueError when neither reading gives ``num_items`` items."""
    count = batch.get("num_items")
    if logits.dim() == 2 and logits.shape[0] == count:
        return None
    labels = batch.get("labels")
    if isinstance(labels, torch.Tensor) and tuple(labels.shape) == tuple(logits.shape[:-1]):
        mask = labels != IGNORE_INDEX
        if int(mask.sum()) == count:
            return mask
    raise ValueError(
        f"outputs of shape {tuple(logits.shape)} hold no per-item class scores for {count} items"
    )


def _items(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x[mask]


class DistillationTask:
    """The task, with ``loss`` replaced by the distillation loss; every other attribute is the task's.

    Args:
        task: the fitted task.
        teacher: frozen, eval mode, on the training device.
        options: the stage's :class:`Options` (or prune's ``finetune.distill``: ``temperature``,
            ``alpha``, ``hidden`` false).
        projection: student width -> teacher width for the hidden term (None: equal widths or no
            hidden term); it is a submodule of the trained model (:class:`ProjectedStudent`).
    """

    def __init__(self, task: Task, teacher: nn.Module, options: Options):
        self.task = task
        self.teacher = teacher
        self.options = options
        self.features: dict[str, torch.Tensor] = {}  # head inputs caught by hooks (hidden)
        # A task that overrides loss() (not only loss_from) computes it its own way: call it as is.
        self._own_loss = type(task).loss is not Task.loss

    def __getattr__(self, name: str):
        return getattr(self.task, name)  # encode, collate, forward, metric, name, metric_names, ...

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        opts, task = self.options, self.task
        student_out = task.forward(model, batch)
        student_features = self.features.get("student")
        if opts.alpha == 1.0:
            total = torch.zeros((), device=_device_of(batch))
        elif self._own_loss:
            total = (1 - opts.alpha) * task.loss(model, batch)
        else:
            total = (1 - opts.alpha) * task.loss_from(student_out, batch)
        if opts.alpha == 0.0 and not opts.hidden:
            return total  # nothing from the teacher is needed
        with torch.no_grad():
            teacher_out = task.forward(self.teacher, batch)
        student_logits = output_logits(student_out)
        mask = item_mask(student_logits, batch)
        if opts.alpha > 0.0:
            teacher_logits = _items(output_logits(teacher_out), mask)
            total = total + opts.alpha * kd_loss(
                _items(student_logits, mask), teacher_logits, opts.temperature
            )
        if opts.hidden:
            projected = _items(student_features, mask)
            if isinstance(model, ProjectedStudent):
                projected = model.projection(projected)
            total = total + opts.hidden_weight * hidden_loss(
                projected, _items(self.features["teacher"], mask)
            )
        return total


class ProjectedStudent(nn.Module):
    """The student plus the hidden term's projection, so the loop's optimizer trains both; it calls and
    reads as the student (``model.encode``, ``model.crf`` ...). Only ``student`` is kept afterwards."""

    def __init__(self, student: nn.Module, projection: nn.Linear):
        super().__init__()
        self.student = student
        self.projection = projection

    def forward(self, *args, **kwargs):
        return self.student(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["student"], name)


def _device_of(batch: dict) -> torch.device:
    return next((v.device for v in batch.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))


# --- the stage ----------------------------------------------------------------------------------------


def apply(ctx, options: dict) -> StageOutput:
    """Distil ``ctx.model`` (the teacher) into a new student of ``options["student"]``; see the module
    docstring. Returns the student (CPU, eval mode) and what model.json records to rebuild it."""
    where = ctx.where("distill")
    opts = parse_options(options, where)
    task, teacher = ctx.task, ctx.model
    cfg = _train_config(ctx.recipe.train, opts.train, where)
    torch.manual_seed(ctx.seed)  # the student's initial weights
    student = build_student(task, opts.student, where)

    device = resolve_device(cfg.device)
    kd_task = DistillationTask(task, teacher, opts)
    hooks = []
    with frozen_teacher(teacher, device):
        try:
            trained = student
            if opts.hidden:
                hooks = _catch_head_inputs(teacher, student, kd_task.features, where)
            probe = probe_outputs(task, kd_task, teacher, student, ctx.splits["train"], device, opts, where)
            if probe["projection"] is not None:
                trained = ProjectedStudent(student, probe["projection"])
            result = fit(trained, kd_task, ctx.splits["train"], ctx.splits.get("validation"), cfg,
                         run_dir=ctx.folder, seed=ctx.seed, show_progress=ctx.progress)  # fmt: skip
        finally:
            for hook in hooks:
                hook.remove()
    student = student.cpu().eval()
    notes = [
        f"student {opts.student.arch}: {_params(student):,} parameters (teacher {_params(teacher):,}), "
        f"trained {result.steps} steps with temperature {opts.temperature}, alpha {opts.alpha}"
        + (", hidden-state matching" + (" through a projection" if probe["projection"] is not None else ""))
        * opts.hidden
    ]
    spec = {"family": opts.student.arch, "config": task.model_config(student)}
    return StageOutput(model=student, spec=spec, notes=notes)


def load(spec: dict, tensors: dict[str, torch.Tensor] | None, task: Task) -> nn.Module:
    """The student model.json's ``spec`` describes, built by the fitted ``task``, with ``tensors``."""
    try:
        model = task.build_model(get_family(spec["family"]), spec["config"], None)
    except (UserError, TypeError, ValueError, KeyError) as exc:
        raise RunDirError(
            f"model.json: its config does not build a '{spec.get('family')}' student: {exc}"
        ) from None
    if tensors is not None:
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise RunDirError(f"model.safetensors: does not fit the student: {str(exc)[:300]}") from None
    return model.eval()


def build_student(task: Task, student: StudentOptions, where: str) -> nn.Module:
    """The student family built by the task with its head; errors name ``{where}.student.<field>``."""
    try:
        family = get_family(student.arch)
        return task.build_model(family, student.config(), None)
    except UserError as exc:
        raise type(exc)(re.sub(r"(?<![\w.\[])model\.", f"{where}.student.", str(exc))) from None


def _train_config(base: TrainConfig, overrides: dict, where: str) -> TrainConfig:
    """The run's train section with the stage's overrides merged in (nested sections key by key)."""
    merged = _merge(base.model_dump(), overrides)
    try:
        return TrainConfig(**merged)
    except ValidationError as exc:
        raise RecipeError(describe(exc, f"{where}.train", TrainConfig)) from None


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _catch_head_inputs(teacher: nn.Module, student: nn.Module, store: dict, where: str) -> list:
    """Forward pre-hooks keeping the first input of each model's ``head`` in ``store``."""
    hooks = []
    for role, model in (("teacher", teacher), ("student", student)):
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Module):
            raise RecipeError(
                f"{where}.hidden: the {role} ({type(model).__name__}) has no 'head' module whose input "
                f"could be matched; set hidden: false."
            )

        def keep(_module, args, role=role):
            store[role] = args[0]

        hooks.append(head.register_forward_pre_hook(keep))
    return hooks


@contextmanager
def frozen_teacher(teacher: nn.Module, device: torch.device):
    """``teacher`` in eval mode, without gradients, on ``device`` inside the block; afterwards back on
    its device, in its mode, with its ``requires_grad`` flags (later stages get the model as given)."""
    teacher_device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    flags = {name: p.requires_grad for name, p in teacher.named_parameters()}
    was_training = teacher.training
    teacher.eval().requires_grad_(False).to(device)
    try:
        yield teacher
    finally:
        teacher.to(teacher_device).train(was_training)
        for name, p in teacher.named_parameters():
            p.requires_grad_(flags[name])


def probe_outputs(task, kd_task, teacher, student, train, device, opts, where: str) -> dict:
    """Run a few train examples through both models before training: refuse outputs that hold no
    per-item class scores (naming the task), and size the hidden projection."""
    n = min(PROBE_EXAMPLES, len(train))
    batch = to_device(task.collate([task.encode(train[i], None) for i in range(n)]), device)
    student.to(device).eval()
    kd_task.features.clear()
    with torch.no_grad():
        outputs = {"teacher": task.forward(teacher, batch), "student": task.forward(student, batch)}
    student.train()
    found = {"projection": None}
    if opts.alpha == 0.0 and not opts.hidden:
        return found
    logits = {role: output_logits(out) for role, out in outputs.items()}
    for role, value in logits.items():
        if value is None:
            raise RecipeError(
                f"{where}: task '{task.name}' returns {_shape(outputs[role])} from the {role}'s forward, not "
                f"class logits; distillation needs per-item class scores (a tensor (..., K) with K >= 2)."
            )
    if logits["teacher"].shape != logits["student"].shape or logits["teacher"].shape[-1] < 2:
        raise RecipeError(
            f"{where}: task '{task.name}': the teacher's outputs {tuple(logits['teacher'].shape)} and the "
            f"student's {tuple(logits['student'].shape)} are not class scores of one shape (..., K >= 2)."
        )
    try:
        item_mask(logits["student"], batch)  # raises when the items cannot be found
    except ValueError as exc:
        raise RecipeError(
            f"{where}: task '{task.name}': {exc}; distillation needs one row of class scores per item, or "
            f"labels marking the scored positions (-100 elsewhere)."
        ) from None
    if opts.hidden:
        feats = {role: kd_task.features.get(role) for role in ("teacher", "student")}
        for role, value in feats.items():
            positions = tuple(logits[role].shape[:-1])
            if not isinstance(value, torch.Tensor) or tuple(value.shape[:-1]) != positions:
                raise RecipeError(
                    f"{where}.hidden: task '{task.name}': the {role}'s head reads {_shape(value)}, not one "
                    f"feature vector per output position; set hidden: false."
                )
        width_s, width_t = feats["student"].shape[-1], feats["teacher"].shape[-1]
        if width_s != width_t:
            found["projection"] = nn.Linear(width_s, width_t).to(device)
    return found


def _shape(value) -> str:
    return (
        f"a tensor {tuple(value.shape)}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
    )


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
