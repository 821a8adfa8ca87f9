"""Image generation with a denoising diffusion model (DDPM), sampled with DDIM; class-conditional.

Training (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"): each example is an image
``x0`` (normalised as every image task does), a time step ``t`` drawn uniformly from
``[0, task.timesteps)`` and Gaussian noise ``eps``, all drawn from the example RNG; the model sees
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` and predicts ``eps``. The loss is the per-image mean
squared error SUMMED over images (``num_items`` = images). ``abar`` comes from the ``cosine``
schedule (Nichol & Dhariwal 2021, "Improved DDPM") or DDPM's ``linear`` one.

Records hold an ``image`` (``data.image``) and, for a class-conditional model
(``task.class_conditional``, the default), a ``label`` (``data.label``). A share
``task.label_dropout`` of training examples is shown as "no class", so the same model also predicts
unconditionally, which classifier-free guidance (Ho & Salimans 2022) needs:
``eps = eps_none + guidance * (eps_class - eps_none)`` (``guidance`` 1 = the conditional model alone).

Sampling is DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models") with
``task.sampling_steps`` evenly spaced steps, deterministic at ``eta = 0``; each step's estimate of
``x0`` is clipped to the images' range. Every sample has its own seed, so an image does not depend on
the batch it was drawn in.

Evaluation: ``loss`` on the split with noise and time steps seeded per example (the same every
time). With ``task.judge: RUN_DIR`` — a finished image_classification run — the task also generates
``task.judge_samples`` samples on each split of ``task.judge_splits``, one for each of that many
evenly spaced examples, conditioned on the example's class and seeded by its position. As seq2seq
decodes in ``forward`` during evaluation, ``forward`` samples for the examples marked so, and the
judge reads both those samples and the split's real images; the metric keeps sums (counts, feature
sums and outer products, a confusion matrix), which add across batches and processes:

* ``recognisability``: the share of samples the judge classifies as the class they were generated
  for (``judge_accuracy_real``: the judge's accuracy on the split's real images, for comparison);
* ``frechet_judge``: the Fréchet distance between Gaussian fits of the judge's penultimate features
  (its backbone's output) of the samples and of the split's real images. FID's formula, but NOT
  Inception FID: no Inception weights are available offline, and the figure is not comparable
  with published FID numbers.

Predict: ``{"label": "Sneaker", "count": 4, "seed": 0}`` (or a list of them, or just a class name)
→ one ``{"label", "seed", "index", "image"}`` per image, ``image`` a uint8 array ``(H, W)`` (grey)
or ``(H, W, 3)``; ``evaluation.generation.save_grid`` writes them as a PNG.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field
from torch import nn

from bigmodel.data.records import MarkedRecords, Records, evenly_spaced
from bigmodel.data.values import class_name
from bigmodel.errors import DataError, RecipeError, UserError, did_you_mean
from bigmodel.evaluation.generation import frechet_distance, gaussian_from_sums, recognition_report
from bigmodel.models.registry import build_config
from bigmodel.tasks.base import (
    ExportSignature,
    LabelOptions,
    Metric,
    batch_signature,
    category_field,
    check_targets,
    is_data_file,
    number_field,
    read_inputs,
    record_schema,
)
from bigmodel.tasks.classification import Labels
from bigmodel.tasks.image import ImageOptions, ImageTask

MAX_COUNT = 10_000  # images one predict request may ask for
# Salts that keep the evaluation's noise, its samples' noise and predict's noise apart.
EVAL_NOISE, EVAL_SAMPLE, PREDICT_SAMPLE = 1, 2, 3


class GenerationOptions(ImageOptions, LabelOptions):
    timesteps: int = Field(1000, ge=2, description="diffusion steps T of training")
    schedule: Literal["cosine", "linear"] = Field(
        "cosine", description="noise schedule: cosine (Nichol & Dhariwal 2021) or linear (Ho et al. 2020)"
    )
    class_conditional: bool = Field(True, description="condition on the label column's classes")
    label_dropout: float = Field(
        0.1, ge=0.0, lt=1.0, description="share of training images shown without their class (for guidance)"
    )
    sampling_steps: int = Field(50, ge=1, description="DDIM steps per sample")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM noise: 0 deterministic, 1 = DDPM's variance")
    guidance: float = Field(
        1.0, ge=0.0, description="classifier-free guidance scale: 1 = conditional model alone, >1 stronger"
    )
    judge: str | None = Field(
        None, description="a finished image_classification run that scores samples during evaluation"
    )
    judge_samples: int = Field(500, ge=2, description="samples generated per judged split")
    judge_splits: list[Literal["validation", "test"]] = Field(
        ["test"], description="held-out splits on which samples are generated and judged"
    )
    eval_examples: int | None = Field(
        None,
        ge=1,
        description="evaluate each held-out split on this many evenly spaced examples (null = all)",
    )


class GenerationOutputs(NamedTuple):
    """What :meth:`ImageGenerationTask.forward` returns: the predicted noise ``(B, C, H, W)`` and, in
    evaluation with a judge, the judge's features ``(N, D)`` and logits ``(N, K)`` of the batch's
    real images and of its samples, with the classes they belong to / were generated for."""

    eps: torch.Tensor
    real: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # features, logits, classes
    samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


# --- the diffusion itself ---------------------------------------------------------------------------


def alphas_cumprod(schedule: str, timesteps: int) -> torch.Tensor:
    """``abar_t`` for ``t = 0 .. T-1`` (float64): the share of the signal's variance left at step t."""
    T = timesteps
    if schedule == "linear":  # Ho et al.'s 1e-4 .. 0.02 for T = 1000, scaled for other T (Improved DDPM)
        scale = 1000 / T
        betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    elif schedule == "cosine":  # abar(s) = cos²((s + 0.008) / 1.008 · π/2), betas capped at 0.999

        def abar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=torch.float64
        )
    else:
        raise ValueError(f"schedule {schedule!r} is not one of cosine, linear")
    return torch.cumprod(1 - betas, dim=0)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``, batch ``(B, C, H, W)``, steps ``t`` ``(B,)``."""
    a = abar.to(x0.device, torch.float32)[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` evenly spaced training steps from ``T - 1`` down to 0 (fewer if they coincide)."""
    picks = np.linspace(timesteps - 1, 0, min(steps, timesteps)).round().astype(int)
    return list(dict.fromkeys(picks.tolist()))


@torch.no_grad()
def ddim_sample(
    model: nn.Module,
    noise: torch.Tensor,
    abar: torch.Tensor,
    steps: int,
    labels: torch.Tensor | None = None,
    null_class: int | None = None,
    guidance: float = 1.0,
    eta: float = 0.0,
    clip: tuple[torch.Tensor, torch.Tensor] | None = None,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12) from ``noise`` ``(B, C, H, W)``; returns ``x0``.

    Args:
        model: ``model(x, t, y) -> eps``.
        abar: the training schedule's ``alphas_cumprod`` ``(T,)``.
        steps: DDIM steps (``ddim_timesteps``).
        labels: classes ``(B,)``, or None for an unconditional model (or "no class").
        null_class: the "no class" index, for classifier-free guidance.
        guidance: ``eps_none + guidance * (eps_class - eps_none)``; 1 = no unconditional pass.
        eta: 0 = deterministic; 1 = the DDPM posterior's variance.
        clip: per-channel ``(low, high)`` ``(C,)`` the estimate of ``x0`` is clipped to at each step.
        generators: one per sample for ``eta > 0`` (each sample's draws independent of the batch).
    """
    x, B = noise, len(noise)
    abar = abar.to(noise.device, torch.float64)
    guided = guidance != 1.0 and labels is not None
    if guided and null_class is None:
        raise ValueError("classifier-free guidance needs the model's 'no class' index (null_class)")
    if clip is not None:
        low, high = (c.to(noise.device, noise.dtype).view(1, -1, 1, 1) for c in clip)
    schedule = ddim_timesteps(len(abar), steps)
    for i, step in enumerate(schedule):
        a = float(abar[step])
        a_prev = float(abar[schedule[i + 1]]) if i + 1 < len(schedule) else 1.0
        t = torch.full((B,), step, device=x.device, dtype=torch.long)
        if guided:
            none = torch.full_like(labels, null_class)
            both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, none]))
            eps_class, eps_none = both.to(noise.dtype).chunk(2)
            eps = eps_none + guidance * (eps_class - eps_none)
        else:
            eps = model(x, t, labels).to(noise.dtype)  # float32 (autocast) or the test's float64
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        if clip is not None:
            x0 = torch.maximum(torch.minimum(x0, high), low)
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)  # the noise consistent with the clipped x0
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev)) if a_prev < 1.0 else 0.0
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _randn(x.shape[1:], generators, B, x.device)
    return x


def seeded_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by its own seed."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _randn(shape, generators: list[torch.Generator] | None, count: int, device) -> torch.Tensor:
    if generators is None:
        return torch.randn(count, *shape, device=device)
    return torch.stack([torch.randn(*shape, generator=g) for g in generators]).to(device)


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (NumPy's SeedSequence), so nearby inputs are unrelated."""
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1)
    )


# --- evaluation splits: which examples are sampled ---------------------------------------------------


# --- the task -----------------------------------------------------------------------------------------


def check_guidance(options: GenerationOptions) -> None:
    """Guidance needs a class to guide towards and the unconditional model that label dropout trains."""
    if options.guidance != 1.0 and not options.class_conditional:
        raise RecipeError(
            f"task.guidance: {options.guidance} guides towards a class, but task.class_conditional is "
            "false; set guidance: 1."
        )
    if options.guidance != 1.0 and options.label_dropout == 0.0:
        raise RecipeError(
            f"task.guidance: {options.guidance} needs the unconditional model, which "
            "task.label_dropout: 0 never trains; set label_dropout (0.1 is usual) or guidance: 1."
        )


class ImageGenerationTask(ImageTask):
    """A denoising diffusion model of the training images, optionally conditioned on their class."""

    name = "image_generation"
    Options = GenerationOptions
    predict_options = ("sampling_steps", "eta", "guidance")
    metric_names = ("loss", "recognisability", "frechet_judge")
    higher_is_better = {"loss": False, "recognisability": True, "frechet_judge": False}
    state_types = {"image": dict, "class_names": list}

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.labels = Labels()
        self._judge = None  # (model, task, class index map) once opened
        self._abar: torch.Tensor | None = None

    @property
    def conditional(self) -> bool:
        return self.options.class_conditional

    @property
    def num_classes(self) -> int:
        return len(self.labels.names) if self.conditional else 0

    @property
    def abar(self) -> torch.Tensor:
        if self._abar is None:
            self._abar = alphas_cumprod(self.options.schedule, self.options.timesteps)
        return self._abar

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        fields = family.config_fields()
        if not {"in_channels", "num_classes"} <= set(fields):
            raise RecipeError(
                f"model.arch: task image_generation needs a denoiser that predicts noise, "
                f"model(x, t, y) (diffusion_unet); '{family.name}' is not one."
            )
        if "num_classes" in recipe.model.options():
            raise RecipeError("model.num_classes: set by the task from the data's classes; remove it.")
        if recipe.model.pretrained:
            raise RecipeError(
                "model.pretrained: image_generation trains its denoiser from scratch; remove it."
            )
        super().check(recipe, family)
        check_guidance(self.options)
        if self.options.judge is not None:
            self.judge_model()  # a judge that cannot be opened fails now, not after training

    def set_predict_options(self, updates) -> None:
        previous = self.options
        super().set_predict_options(updates)
        try:
            check_guidance(self.options)
        except RecipeError:
            self.options = previous
            raise

    def clean(self, records: Records, split: str) -> Records:
        if self.conditional:
            records = self.drop_missing_labels(records, split)
        if split == "train":
            return records
        n = self.options.eval_examples
        if n is not None and n < len(records):
            records = records.select(evenly_spaced(len(records), n))
        judged = self.options.judge is not None and split in self.options.judge_splits
        sampled = set(evenly_spaced(len(records), self.options.judge_samples).tolist()) if judged else set()
        return MarkedRecords(records, "_eval", [(i, judged, i in sampled) for i in range(len(records))])

    def strata(self, records: Records):
        label = self.data.get("label") or "label"
        if not self.conditional or label not in records.columns:
            return None
        return [class_name(v) for v in records.column(label)]

    def fit(self, train: Records) -> None:
        if self.conditional:
            label = self.data.get("label") or "label"
            if label not in train.columns:
                raise DataError(
                    f"data.label: column '{label}' is not in {train.where}; a class-conditional model needs "
                    f"the classes. Name the label column, or set task.class_conditional: false. Columns: "
                    f"{', '.join(train.columns)}.{did_you_mean(label, train.columns)}"
                )
            self.labels.fit(train.column(label), f"{train.where} (train split)")
        self.fit_images(train, None)
        if self.options.judge is not None:
            self.judge_model()  # its classes must cover ours

    def validate(self, records: Records, split: str) -> None:
        if self.conditional:
            check_targets(self.data, records, split, self.labels.index)
        self.validate_images(records, split)

    def state(self) -> dict:
        return {**super().state(), "class_names": self.labels.names}

    @classmethod
    def restore(cls, state, run_dir):
        task = super().restore(state, run_dir)
        task.labels = Labels(state["class_names"])
        return task

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        wanted = {"in_channels": self.image_spec["channels"], "num_classes": self.num_classes}
        return family.model_cls(build_config(family, {**options, **wanted}))

    # -- examples and batches -----------------------------------------------------------------------

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        if "_request" in example:  # a predict request (parse)
            return {"request": (example["label"], example["seed"], example["index"])}
        x = self.normalized(self.load(example, "example"))
        label = self.data.get("label") or "label"
        y = self.labels.index(example[label]) if self.conditional and label in example else None
        position, judged, sampled = example.get("_eval", (None, False, False))
        if rng is None:  # evaluation: the same noise and step for this example every time
            key = position if position is not None else zlib.crc32(x.numpy().tobytes())
            rng = np.random.default_rng(_seed(EVAL_NOISE, key))
        elif y is not None and rng.random() < self.options.label_dropout:
            y = self.num_classes  # "no class": trains the unconditional model guidance needs
        t = int(rng.integers(self.options.timesteps))
        noise = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32))
        return {"x": x, "t": t, "noise": noise, "y": y, "judged": judged,
                "sample_seed": _seed(EVAL_SAMPLE, position) if sampled else None}  # fmt: skip

    def collate(self, items: list[dict]) -> dict:
        if "request" in items[0]:
            labels = [item["request"][0] for item in items]
            return {"requests": [item["request"] for item in items], "num_items": len(items),
                    "y": None if labels[0] is None else torch.as_tensor(labels)}  # fmt: skip
        batch = {
            "x": torch.stack([item["x"] for item in items]),
            "t": torch.as_tensor([item["t"] for item in items]),
            "noise": torch.stack([item["noise"] for item in items]),
            "y": None if items[0]["y"] is None else torch.as_tensor([item["y"] for item in items]),
            "num_items": len(items),
        }
        if any(item["judged"] for item in items):
            batch["judged"] = [item["judged"] for item in items]
            batch["sample_seeds"] = [item["sample_seed"] for item in items]
        return batch

    def forward(self, model: nn.Module, batch: dict) -> GenerationOutputs:
        x_t = add_noise(batch["x"], batch["noise"], batch["t"], self.abar)
        eps = model(x_t, batch["t"], batch["y"])
        if model.training or "judged" not in batch or self.options.judge is None:
            return GenerationOutputs(eps)
        real = self._judge_rows(batch, [i for i, judged in enumerate(batch["judged"]) if judged])
        rows = [i for i, seed in enumerate(batch["sample_seeds"]) if seed is not None]
        samples = None
        if rows:
            y = None if batch["y"] is None else batch["y"][rows]
            images = self.sample(model, [batch["sample_seeds"][i] for i in rows], y, batch["x"].device)
            samples = (*self.judge(images), y)
        return GenerationOutputs(eps, real, samples)

    def export_signature(self, model: nn.Module, batch: dict) -> ExportSignature:
        """The denoiser: ``x`` (B, C, H, W) a noisy image, ``t`` (B,) its time step and, for a
        class-conditional model, ``y`` (B,) the class (the "no class" id for guidance) -> the predicted
        noise (B, C, H, W). The sampling loop (the noise schedule, guidance) stays outside the graph."""
        names = ["x", "t"] if batch.get("y") is None else ["x", "t", "y"]
        return batch_signature(model, batch, names, task=self.name)

    def _judge_rows(self, batch: dict, rows: list[int]):
        if not rows:
            return None
        images = self.unnormalized(batch["x"][rows])
        return (*self.judge(images), None if batch["y"] is None else batch["y"][rows])

    def check_outputs(self, outputs, batch: dict) -> None:
        eps = outputs.eps if isinstance(outputs, GenerationOutputs) else outputs
        if not isinstance(eps, torch.Tensor) or eps.shape != batch["x"].shape:
            got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
            raise DataError(
                f"module: image_generation needs the predicted noise of the input's shape "
                f"{tuple(batch['x'].shape)}, got {got}."
            )

    def loss_from(self, outputs, batch: dict) -> torch.Tensor:
        eps = outputs.eps if isinstance(outputs, GenerationOutputs) else outputs
        per_image = (eps.float() - batch["noise"]).square().flatten(1).mean(1)  # (B,)
        return per_image.sum()

    def metric(self) -> GenerationMetric:
        return GenerationMetric(self)

    # -- sampling -----------------------------------------------------------------------------------

    def unnormalized(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, C, H, W)`` back to [0, 1]."""
        mean = torch.tensor(self.image_spec["mean"], device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.image_spec["std"], device=x.device).view(1, -1, 1, 1)
        return (x.float() * std + mean).clamp(0, 1)

    def sample(self, model: nn.Module, seeds: list[int], labels: torch.Tensor | None, device) -> torch.Tensor:
        """One image in [0, 1] ``(C, H, W)`` per seed (and class), by DDIM with the task's options."""
        C, (H, W) = self.image_spec["channels"], self.image_spec["size"]
        generators = seeded_generators(seeds)
        noise = _randn((C, H, W), generators, len(seeds), device)
        mean, std = torch.tensor(self.image_spec["mean"]), torch.tensor(self.image_spec["std"])
        o = self.options
        x0 = ddim_sample(
            model, noise, self.abar, o.sampling_steps, labels=labels, null_class=self.num_classes or None,
            guidance=o.guidance, eta=o.eta, clip=(-mean / std, (1 - mean) / std), generators=generators,
        )  # fmt: skip
        return self.unnormalized(x0)

    # -- the judge ----------------------------------------------------------------------------------

    def judge_model(self):
        """``(model, task, classes)`` of ``task.judge``: an image_classification run's model (a headless
        backbone + linear head), its task, and the judge's class index of each of our classes."""
        if self._judge is not None:
            return self._judge
        from bigmodel.rundir import open_run  # the wiring module; imported late, as it imports tasks

        path = self.options.judge
        model, task, _ = open_run(path)
        if not (hasattr(task, "labels") and hasattr(task, "image_spec") and hasattr(model, "backbone")
                and hasattr(model, "head")):  # fmt: skip
            raise RecipeError(
                f"task.judge: '{path}' is a {task.name} run; the judge must be an image_classification run "
                "(a backbone and a linear head)."
            )
        if self.image_spec and task.image_spec["channels"] != self.image_spec["channels"]:
            raise RecipeError(
                f"task.judge: '{path}' reads {task.image_spec['channels']}-channel images, these have "
                f"{self.image_spec['channels']}."
            )
        missing = [n for n in self.labels.names if n not in task.labels.names]
        if missing:
            raise RecipeError(
                f"task.judge: '{path}' does not know the classes {', '.join(missing)}; its classes are "
                f"{', '.join(task.labels.names)}."
            )
        classes = torch.as_tensor([task.labels.names.index(n) for n in self.labels.names], dtype=torch.long)
        if self.labels.names:  # fitted: keep it (check() opens it before the classes are known)
            self._judge = (model, task, classes)
        return model, task, classes

    @torch.no_grad()
    def judge(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The judge's penultimate features ``(N, D)`` and its logits over OUR classes ``(N, K)`` for
        images in [0, 1] ``(N, C, H, W)``."""
        model, task, classes = self.judge_model()
        model.to(images.device).eval()
        size = tuple(task.image_spec["size"])
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(task.image_spec["mean"], device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(task.image_spec["std"], device=images.device).view(1, -1, 1, 1)
        features = model.backbone((images - mean) / std)
        logits = model.head(features)[:, classes.to(images.device)]
        return features.float(), logits.float()

    # -- prediction ---------------------------------------------------------------------------------

    def parse(self, raw) -> list[dict]:
        """Requests ``{"label": NAME, "count": N, "seed": S}`` (label optional for an unconditional model;
        count 1, seed 0 by default), a class name, a list of those, or a .jsonl/.csv file of requests:
        one example per image, image ``i`` of a request seeded by ``(seed, i)``."""

        def as_request(item):  # a bare class name stands for {"label": name}
            return {"label": item} if isinstance(item, str) and not is_data_file(item) else item

        raw = [as_request(r) for r in raw] if isinstance(raw, (list, tuple)) else as_request(raw)
        if isinstance(raw, Mapping) or (isinstance(raw, (list, tuple)) and raw) or is_data_file(raw):
            inputs = read_inputs(raw)
        else:
            raise DataError(
                f"inputs: expected a request {{'label': class, 'count': n, 'seed': s}}, a list of them or a "
                f"class name; got {type(raw).__name__}."
            )
        examples = []
        for record, row in zip(inputs.records, inputs.rows, strict=True):
            examples += self._request(record, f"{inputs.where}: row {row}")
        return examples

    def _request(self, record: dict, where: str) -> list[dict]:
        unknown = sorted(set(record) - {"label", "count", "seed"})
        if unknown:
            raise DataError(f"{where}: unknown key '{unknown[0]}'; a request has label, count and seed.")
        label = record.get("label")
        if label is None and self.conditional and self.options.label_dropout == 0.0:
            raise DataError(
                f"{where}: no 'label'; this model was trained on classes only (task.label_dropout 0). "
                f"Classes: {', '.join(self.labels.names)}."
            )
        if label is not None and not self.conditional:
            raise DataError(
                f"{where}: 'label' {label!r}, but this model is not class-conditional; leave it out."
            )
        index = None
        if label is not None:
            try:
                index = self.labels.index(label)
            except DataError as exc:
                raise DataError(f"{where}: {exc}{did_you_mean(str(label), self.labels.names)}") from None
        elif self.conditional:
            index = self.num_classes  # "no class": the unconditional model
        count, seed = record.get("count", 1), record.get("seed", 0)
        for key, value, low, high in (("count", count, 1, MAX_COUNT), ("seed", seed, 0, 2**63 - 1)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise DataError(f"{where}: '{key}' must be a whole number in [{low}, {high}], got {value!r}.")
        return [{"_request": True, "label": index, "seed": seed, "index": i} for i in range(count)]

    def input_schema(self) -> dict:
        """A request: the class to draw (a class-conditional model; required unless it also learned to
        draw without one), how many images, and the seed of the first."""
        fields = {}
        if self.conditional:
            optional = self.options.label_dropout > 0
            fields["label"] = category_field(self.labels.names, "the class to draw" + (
                "; leave it out for any class" if optional else ""))  # fmt: skip
        fields["count"] = number_field(
            "how many images", integer=True, minimum=1, maximum=MAX_COUNT, default=1
        )
        fields["seed"] = number_field("the sampling noise's seed: equal seeds, equal images", integer=True,
                                      minimum=0, maximum=2**63 - 1, default=0)  # fmt: skip
        required = ["label"] if self.conditional and self.options.label_dropout == 0 else []
        return record_schema(fields, required, "a request for generated images")

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        """Per image: ``{"label", "seed", "index", "image"}``, ``image`` a PIL image (grey or RGB) that
        ``bigmodel predict`` writes as a PNG (``np.asarray(image)`` gives the uint8 pixels)."""
        device = next(iter(model.parameters())).device
        requests = batch["requests"]
        seeds = [_seed(PREDICT_SAMPLE, seed, i) for _, seed, i in requests]
        y = None if batch["y"] is None else batch["y"].to(device)
        images = self.sample(model, seeds, y, device)
        arrays = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        names = self.labels.names
        return [
            {
                "label": None if label is None or label >= len(names) else names[label],
                "seed": seed,
                "index": i,
                "image": Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a),
            }  # fmt: skip
            for (label, seed, i), a in zip(requests, arrays, strict=True)
        ]


class GenerationMetric(Metric):
    """Summed loss and images; with a judge, the real images' and the samples' feature sums and outer
    products (Gaussian fits that merge by addition) and ``[class, judged class]`` confusion counts."""

    def __init__(self, task: ImageGenerationTask):
        super().__init__()
        self.task = task

    def update(self, outputs: GenerationOutputs, batch: dict) -> None:
        eps = outputs.eps if isinstance(outputs, GenerationOutputs) else outputs
        self.count_non_finite(eps)
        per_image = (eps.float() - batch["noise"]).square().flatten(1).mean(1)
        self.add("loss", torch.nan_to_num(per_image).sum())
        self.add("count", torch.tensor(len(per_image)))
        if not isinstance(outputs, GenerationOutputs):
            return
        for name, part in (("real", outputs.real), ("sample", outputs.samples)):
            if part is None:
                continue
            features, logits, classes = part
            f = features.double()
            self.count_non_finite(f)
            self.add(f"{name}_n", torch.tensor(len(f)))
            self.add(f"{name}_sum", f.sum(0))
            self.add(f"{name}_outer", f.T @ f)
            if classes is not None:
                k = logits.shape[1]
                judged = logits.argmax(1).cpu()
                self.add(
                    f"{name}_confusion",
                    torch.bincount(classes.cpu() * k + judged, minlength=k * k).reshape(k, k),
                )

    def compute(self) -> dict:
        self.check_finite()
        count = float(self.sums.get("count", torch.tensor(0.0)))
        if not count:
            raise UserError("image_generation: no image in this split (it is empty).")
        out = {"loss": float(self.sums["loss"]) / count, "images": int(count)}
        if "sample_n" not in self.sums:
            return out
        names = self.task.labels.names
        out["samples"] = int(self.sums["sample_n"])
        if "sample_confusion" in self.sums:
            out |= recognition_report(self.sums["sample_confusion"].numpy(), names)
        if "real_confusion" in self.sums:
            out["judge_accuracy_real"] = recognition_report(self.sums["real_confusion"].numpy(), names)[
                "recognisability"
            ]
        if int(self.sums["sample_n"]) >= 2 and int(self.sums.get("real_n", 0)) >= 2:
            fake = gaussian_from_sums(*(self.sums[f"sample_{k}"].numpy() for k in ("n", "sum", "outer")))
            real = gaussian_from_sums(*(self.sums[f"real_{k}"].numpy() for k in ("n", "sum", "outer")))
            out["frechet_judge"] = frechet_distance(*fake, *real)
            out["real_images_judged"] = int(self.sums["real_n"])
        out["note"] = (
            "frechet_judge is the Frechet distance between Gaussian fits of the penultimate features of the "
            f"judge classifier {self.task.options.judge} (samples vs this split's real images): FID's "
            "formula, NOT Inception FID, and not comparable with published FID figures."
        )
        return out
