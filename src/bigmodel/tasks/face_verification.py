"""Face verification: an embedding trained with ArcFace, measured on people never seen in training.

The training split's people are the classes of an ArcFace head (``nn/margin.py``) on top of any image
backbone, built headless, and a projection (linear + BatchNorm, ArcFace's "E" output): the model's
output is the L2-normalised embedding, and two faces are compared by the cosine of their embeddings.
The head exists only to train; evaluation and ``predict`` read embeddings alone.

Validation and test hold other people (``validate`` refuses a split that shares anyone with train).
On such a split the metric scores pairs of its own images: every pair of photos of one person
(positive) and of two people (negative), or seeded samples of ``task.max_pairs`` of each kind. It
reports ROC AUC, the verification accuracy (balanced: the mean of the true-accept and true-reject
rates, which a 50/50 pair set such as LFW's estimates) and rank-1 identification (each image's
nearest other image in the split, leave-one-out). The same numbers on the model's input pixels
(cosine on raw pixels) are the baseline the embedding must beat.

Thresholds. Same/different needs a cosine threshold chosen on held-out people: the validation
split's best threshold is stored with the task by :meth:`calibrate`, which the pipeline calls after
training, before the test split is evaluated (``Task.calibrate``). Every split also reports
``verification_accuracy_at_best_threshold``, at the threshold best for *its own* pairs — optimistic
on any split but validation, and named so. ``verification_accuracy`` (and ``threshold``) appear only
with a threshold from elsewhere: the validation split's, or a fixed ``task.threshold``.

``predict`` takes one image (returns its embedding) or two (a record with ``image`` and
``image_pair``, or a tuple of two images; returns ``same``, the cosine ``score`` and ``threshold``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bigmodel.data.images import is_image_path, load_image
from bigmodel.data.records import Records
from bigmodel.data.transforms import color_jitter, random_crop, random_flip, random_resized_crop, resize
from bigmodel.data.values import class_name
from bigmodel.errors import DataError, RecipeError, UserError
from bigmodel.nn.margin import ArcMarginHead
from bigmodel.tasks.base import (
    ExportSignature,
    LabelOptions,
    Metric,
    batch_signature,
    check_targets,
    label_column,
    record_schema,
)
from bigmodel.tasks.classification import Labels
from bigmodel.tasks.image import ImageOptions, ImageTask
from bigmodel.tasks.image_classification import AugmentOptions

PAIR_SEED = 0  # pairs sampled from a large split are the same on every evaluation


class FaceVerificationOptions(ImageOptions, LabelOptions):
    embedding_dim: int = Field(128, ge=1, description="width of the normalised embedding")
    scale: float = Field(30.0, gt=0, description="ArcFace's s: the cosine logits' scale")
    margin: float = Field(
        0.5, ge=0, lt=math.pi / 2, description="ArcFace's additive angular margin m (radians)"
    )
    easy_margin: bool = Field(False, description="add the margin only where cos(theta) > 0")
    augment: AugmentOptions = AugmentOptions()
    flip_test: bool = Field(
        True, description="embed each image and its mirror image and average the two (evaluation and predict)"
    )
    threshold: float | None = Field(
        None, ge=-1.0, le=1.0,
        description="a fixed cosine threshold for same/different; default: the one chosen on the validation "
        "split after training",
    )  # fmt: skip
    pair_column: str = Field("image_pair", min_length=1, description="predict: the second image of a pair")
    max_pairs: int = Field(
        200_000,
        ge=1,
        description="positive and negative pairs scored per split, each (a seeded sample beyond)",
    )
    max_eval_examples: int = Field(
        10_000, ge=2,
        description="largest validation/test split: the metric keeps every embedding (and, for the "
        "baseline, every input) of the split",
    )  # fmt: skip
    raw_pixel_baseline: bool = Field(True, description="also score pairs by the cosine of the input pixels")


class FaceEmbeddingModel(nn.Module):
    """``normalize(BN(linear(backbone(x))))`` -> ``(B, embedding_dim)``, plus the ArcFace ``head``
    (``(B, D)`` embeddings and labels -> ``(B, identities)`` logits) that only training uses.

    Args:
        backbone: a headless image family, ``(B, C, H, W)`` -> ``(B, backbone.feature_dim)``.
        embedding_dim: D.
        num_identities: the training split's people (the head's classes).
        scale, margin, easy_margin: the head's (see :class:`~bigmodel.nn.margin.ArcMarginHead`).
    """

    def __init__(self, backbone: nn.Module, embedding_dim: int, num_identities: int, scale: float = 30.0,
                 margin: float = 0.5, easy_margin: bool = False):  # fmt: skip
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Linear(backbone.feature_dim, embedding_dim)
        self.norm = nn.BatchNorm1d(embedding_dim)
        self.head = ArcMarginHead(embedding_dim, num_identities, scale, margin, easy_margin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.projection(self.backbone(x))  # (B, D)
        if self.training and len(z) == 1:  # BatchNorm has no batch statistics of one example
            n = self.norm
            z = F.batch_norm(z, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)
        else:
            z = self.norm(z)
        return F.normalize(z.float(), dim=-1)


class FlipTestEmbedding(nn.Module):
    """``x`` -> ``normalize(model(x) + model(mirrored x))``: the evaluation embedding with flip-test,
    as one graph (:meth:`FaceVerificationTask.embed`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model(x).float() + self.model(x.flip(-1)).float(), dim=-1)  # (B, D)


class FaceVerificationTask(ImageTask):
    """Embeddings of faces (or any images with identities) for same/different and nearest-neighbour
    identification of people unseen in training. See the module docstring."""

    name = "face_verification"
    Options = FaceVerificationOptions
    predict_options = ("flip_test", "threshold")
    metric_names = ("roc_auc", "verification_accuracy_at_best_threshold", "rank1")
    higher_is_better = {name: True for name in metric_names}
    state_types = {"image": dict, "identities": list, "threshold": (float, int, type(None))}

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.identities = Labels()  # the training split's people: the ArcFace head's classes
        self.threshold: float | None = None  # chosen on the validation split by calibrate()

    @property
    def pair_column(self) -> str:
        return self.options.pair_column

    # -- recipe, data and fitting -------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        super().check(recipe, family)
        if self.pair_column == self.image_column:
            raise RecipeError(
                f"task.pair_column: '{self.pair_column}' is also the image column (data.image); name the "
                "second image of a pair another column."
            )

    def clean(self, records: Records, split: str) -> Records:
        return self.drop_missing_labels(records, split)

    def fit(self, train: Records) -> None:
        label = label_column(self.data, train)
        self.identities.fit(train.column(label), f"{train.where} (train split)")
        self.fit_images(train, self.pretrained)

    def validate(self, records: Records, split: str) -> None:
        if split == "train":
            check_targets(self.data, records, split, self.identities.index)
        else:
            self._check_held_out(records, split)
        self.validate_images(records, split)

    def _check_held_out(self, records: Records, split: str) -> None:
        """A validation/test split: people unseen in training, enough of them to make pairs, and
        small enough for the metric to keep every embedding."""
        where = f"{records.where} ({split} split)"
        if len(records) > self.options.max_eval_examples:
            size = len(records) * 4 * self.options.embedding_dim / 2**20
            raise DataError(
                f"{where}: {len(records):,} images; the {self.name} metric keeps every embedding of a "
                f"split, up to task.max_eval_examples = {self.options.max_eval_examples:,}. Raise it if "
                f"memory allows (about {size:.0f} MiB of embeddings, plus the inputs with "
                "task.raw_pixel_baseline), or give a smaller split."
            )
        people = [class_name(v) for v in records.column(label_column(self.data, records))]
        seen = sorted(set(people) & set(self.identities.names))
        if seen:
            shown = ", ".join(seen[:5]) + (f" and {len(seen) - 5} more" if len(seen) > 5 else "")
            raise DataError(
                f"{where}: {len(seen)} of its people ({shown}) also appear in the train split. Face "
                "verification is measured on people never seen in training: give validation/test sources "
                "with other people (data.validation, data.test, or an images: folder with train/, "
                "validation/ and test/ folders of person folders), not a random share of the same people."
            )
        counts = np.unique(people, return_counts=True)[1]
        if len(counts) < 2 or counts.max() < 2:
            raise DataError(
                f"{where}: {len(counts)} people with at most {counts.max() if len(counts) else 0} image(s) "
                "each; verification needs at least two people and someone with two images (a pair of "
                "the same person and a pair of two people)."
            )

    def state(self) -> dict:
        return {**super().state(), "identities": self.identities.names, "threshold": self.threshold}

    @classmethod
    def restore(cls, state, run_dir):
        task = super().restore(state, run_dir)
        task.identities = Labels(state["identities"])
        threshold = state["threshold"]
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise DataError(f"task.json: 'threshold' {threshold!r} is not a cosine in [-1, 1].")
        task.threshold = None if threshold is None else float(threshold)
        return task

    def calibrate(self, validation_metrics: Mapping) -> bool:
        """Keep the validation split's best threshold (``validation_metrics`` is its :meth:`metric`'s
        ``compute()``) for ``predict`` and for the verification accuracy of later evaluations.

        The pipeline should call this after training, between evaluating the validation split and the
        test split, and then write task.json again (it is written before training). Returns whether
        the task's state changed."""
        if "best_threshold" not in validation_metrics:
            return False
        self.threshold = float(validation_metrics["best_threshold"])
        return True

    def decision_threshold(self) -> tuple[float | None, str]:
        """The threshold same/different uses and where it came from: ``task.threshold``, else the
        validation split's (``calibrate``), else ``(None, "")``."""
        if self.options.threshold is not None:
            return float(self.options.threshold), "task.threshold"
        if self.threshold is not None:
            return self.threshold, "validation split"
        return None, ""

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        backbone = self.build_backbone(family, options, pretrained)
        o = self.options
        return FaceEmbeddingModel(backbone, o.embedding_dim, len(self.identities.names), o.scale, o.margin,
                                  o.easy_margin)  # fmt: skip

    # -- examples and batches -----------------------------------------------------------------------

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        x = self.load(example, "example")
        if rng is not None:
            x = self.augment(x, rng)
        label = self.data.get("label") or "label"
        person = class_name(example[label]) if label in example else None
        try:  # the ArcFace class of a training person; held-out people have none
            y = self.identities.index(person)
        except DataError:
            y = None
        item = {"x": self.normalized(x), "identity": person, "y": y}
        pair = example.get(self.pair_column)
        if pair is not None:
            item["x_pair"] = self.normalized(self.load_value(pair, f"example, column '{self.pair_column}'"))
        return item

    def load_value(self, value, where: str) -> torch.Tensor:
        """An image value (path, bytes, array, PIL) decoded and resized to the task's size."""
        return resize(load_image(value, where, self.image_spec["channels"]), tuple(self.image_spec["size"]))

    def augment(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        aug, size = self.options.augment, tuple(self.image_spec["size"])
        if aug.resized_crop:
            x = random_resized_crop(x, size, rng)
        if aug.crop_padding:
            x = random_crop(x, size, aug.crop_padding, rng)
        if aug.flip:
            x = random_flip(x, rng)
        return color_jitter(x, aug.color_jitter, rng)

    def collate(self, items: list[dict]) -> dict:
        batch = {"x": torch.stack([item["x"] for item in items]), "num_items": len(items),
                 "identity": [item["identity"] for item in items]}  # fmt: skip
        if all(item["y"] is not None for item in items):
            batch["y"] = torch.as_tensor([item["y"] for item in items])
        paired = [i for i, item in enumerate(items) if "x_pair" in item]
        if paired:
            batch["x_pair"] = torch.stack([items[i]["x_pair"] for i in paired])
            batch["pair_index"] = torch.as_tensor(paired)
        return batch

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> normalised ``(B, D)``; in evaluation with ``flip_test``, the average of
        the image's and its mirror image's embeddings (a face and its mirror are one person)."""
        z = model(x).float()
        if self.options.flip_test and not model.training:
            z = F.normalize(z + model(x.flip(-1)).float(), dim=-1)
        return z

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return self.embed(model, batch["x"])

    def export_signature(self, model: nn.Module, batch: dict) -> ExportSignature:
        """``x`` (B, C, H, W) -> the normalised embedding (B, D) that ``forward`` returns in evaluation,
        the flip-test average included when ``task.flip_test`` is on."""
        module = FlipTestEmbedding(model) if self.options.flip_test else model
        return batch_signature(module, batch, ["x"], task=self.name)

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        if "y" not in batch:
            raise DataError(f"{self.name}: a training batch holds people the train split does not have.")
        logits = model.head(self.forward(model, batch), batch["y"])
        return F.cross_entropy(logits, batch["y"], reduction="sum")

    def metric(self) -> VerificationMetric:
        return VerificationMetric(self)

    # -- prediction ---------------------------------------------------------------------------------

    def parse(self, raw) -> list[dict]:
        """What :class:`ImageTask` accepts (one image or many: each is embedded), and pairs: a record
        with the image column and ``task.pair_column``, a tuple of two images, or a list of such tuples.
        Every image is decoded here, so a bad one is refused naming it."""
        if _is_pair(raw):
            raw = [raw]
        if isinstance(raw, list) and raw and all(_is_pair(r) for r in raw):
            records = [{self.image_column: a, self.pair_column: b} for a, b in raw]
            for i, (a, b) in enumerate(raw):
                where = "inputs" if len(raw) == 1 else f"inputs: pair {i + 1}"
                self.load_value(a, f"{where}, first image")
                self.load_value(b, f"{where}, second image")
            return records
        records = super().parse(raw)  # the image column decoded, naming a bad one
        for i, record in enumerate(records):
            if record.get(self.pair_column) is not None:
                self.load_value(
                    record[self.pair_column], f"inputs: record {i + 1}, column '{self.pair_column}'"
                )
        return records

    def input_schema(self) -> dict:
        """A face (predict returns its embedding) and, when the run has a same/different threshold, a
        second face to compare it with (predict returns same, score and threshold)."""
        fields = {self.image_column: self.image_field("a face")}
        if self.decision_threshold()[0] is not None:
            fields[self.pair_column] = self.image_field("a second face: is it the same person?")
        return record_schema(fields, [self.image_column], "a face, or two faces to compare")

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        z = self.forward(model, batch).cpu()
        out: list[dict] = [{"embedding": [round(float(v), 6) for v in row]} for row in z]
        if "x_pair" not in batch:
            return out
        threshold, _ = self.decision_threshold()
        if threshold is None:
            raise UserError(
                "inputs: comparing two faces needs a same/different threshold, and this run has none: it "
                "was neither set (task.threshold) nor chosen on a validation split after training. Train "
                "with a validation split of other people, or set task.threshold."
            )
        index = batch["pair_index"].cpu()
        scores = (z[index] * self.embed(model, batch["x_pair"]).cpu()).sum(-1)
        for i, score in zip(index.tolist(), scores.tolist(), strict=True):
            out[i] = {"same": score >= threshold, "score": round(score, 6), "threshold": round(threshold, 6)}
        return out


def _is_pair(value) -> bool:
    """A tuple of exactly two images (paths, bytes, arrays or PIL images): one pair to compare."""
    return isinstance(value, tuple) and len(value) == 2 and all(_is_image(v) for v in value)


def _is_image(value) -> bool:
    return (
        is_image_path(value)
        or isinstance(value, (bytes, bytearray, np.ndarray, torch.Tensor))
        or hasattr(value, "mode")  # a PIL image
    )


# --- the metric ---------------------------------------------------------------------------------------


class VerificationMetric(Metric):
    """ROC AUC, verification accuracy and rank-1 identification over the pairs of one split.

    These are not sums over batches: a pair joins images from any two batches, and the threshold
    and the AUC need every score at once. So the metric keeps each image's embedding (``(N, D)``
    floats) and person, and with ``task.raw_pixel_baseline`` its input pixels; ``validate`` bounds N by
    ``task.max_eval_examples`` (ORL's 80 test faces: 40 KB of embeddings, 3 MB of pixels). ``sums``
    holds the counts that do add up; merging ranks would gather the embeddings, not add them.
    """

    def __init__(self, task: FaceVerificationTask):
        super().__init__()
        self.task = task
        self.embeddings: list[torch.Tensor] = []
        self.pixels: list[torch.Tensor] = []
        self.identities: list[str] = []

    def update(self, outputs: torch.Tensor, batch: dict) -> None:
        self.count_non_finite(outputs)
        self.add("images", torch.tensor(len(outputs)))
        self.embeddings.append(outputs.detach().float().cpu())
        self.identities += batch["identity"]
        if self.task.options.raw_pixel_baseline:
            self.pixels.append(batch["x"].detach().flatten(1).float().cpu())

    def compute(self) -> dict:
        self.check_finite()
        if not self.embeddings:
            raise DataError(f"{self.task.name}: no images to evaluate.")
        people = np.unique(np.asarray(self.identities, dtype=object).astype(str), return_inverse=True)[1]
        first, second, same = verification_pairs(people, self.task.options.max_pairs, PAIR_SEED)
        report = {"images": len(people), "identities": int(people.max()) + 1,
                  "positive_pairs": int(same.sum()), "negative_pairs": int((~same).sum())}  # fmt: skip
        embeddings = torch.cat(self.embeddings)
        scores = pair_scores(embeddings, first, second)
        report |= scores_report(scores, same, embeddings, people)
        threshold, source = self.task.decision_threshold()
        if threshold is not None:
            accept, reject = accept_reject_rates(scores, same, threshold)
            report |= {"threshold": threshold, "threshold_source": source,
                       "verification_accuracy": (accept + reject) / 2, "true_accept_rate": accept,
                       "true_reject_rate": reject}  # fmt: skip
        if self.pixels:
            pixels = torch.cat(self.pixels)
            raw = scores_report(pair_scores(pixels, first, second), same, pixels, people)
            report |= {f"raw_pixel_{k}": v for k, v in raw.items() if k != "best_threshold"}
        return report


def scores_report(scores: np.ndarray, same: np.ndarray, vectors: torch.Tensor, people: np.ndarray) -> dict:
    """AUC, best threshold and its accuracy of the pairs' cosine ``scores``, and rank-1 of ``vectors``."""
    threshold, accuracy = best_threshold(scores, same)
    rank1, queries = rank1_identification(vectors, people)
    return {
        "roc_auc": roc_auc(scores, same),
        "best_threshold": threshold,
        "verification_accuracy_at_best_threshold": accuracy,
        "rank1": rank1,
        "rank1_queries": queries,
    }


def verification_pairs(people: np.ndarray, max_pairs: int, seed: int = PAIR_SEED):
    """Pairs of a split's images, ``(first, second, same)`` (index arrays and a bool array).

    Every pair of one person's images (positive) and every pair of two people's (negative); where a
    kind has more than ``max_pairs``, a seeded uniform sample of ``max_pairs`` of that kind instead
    (with replacement: a large split's pairs far outnumber the sample)."""
    people = np.asarray(people)
    n = len(people)
    rng = np.random.default_rng(seed)
    order = np.argsort(people, kind="stable")  # the images of each person, together
    counts = np.bincount(people)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    per_person = counts * (counts - 1) // 2
    positives, negatives = int(per_person.sum()), n * (n - 1) // 2 - int(per_person.sum())
    if positives <= max_pairs:
        pos = [order[starts[p] + np.stack(np.triu_indices(c, 1))] for p, c in enumerate(counts) if c > 1]
        pos = np.concatenate(pos, axis=1) if pos else np.zeros((2, 0), np.int64)
    else:
        person = rng.choice(len(counts), size=max_pairs, p=per_person / positives)
        a = rng.integers(0, counts[person])
        b = rng.integers(0, counts[person] - 1)
        b += b >= a  # a second, different photo of the same person
        pos = np.stack([order[starts[person] + a], order[starts[person] + b]])
    if negatives <= max_pairs and n * (n - 1) // 2 <= 4 * max_pairs:
        i, j = np.triu_indices(n, 1)
        keep = people[i] != people[j]
        neg = np.stack([i[keep], j[keep]])
    else:
        picked: list[np.ndarray] = []
        wanted = min(max_pairs, negatives)
        while sum(p.shape[1] for p in picked) < wanted:
            i, j = rng.integers(0, n, size=(2, 2 * wanted))
            keep = people[i] != people[j]
            picked.append(np.stack([i[keep], j[keep]]))
        neg = np.concatenate(picked, axis=1)[:, :wanted]
    both = np.concatenate([pos, neg], axis=1)
    same = np.concatenate([np.ones(pos.shape[1], bool), np.zeros(neg.shape[1], bool)])
    return both[0], both[1], same


def pair_scores(vectors: torch.Tensor, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``vectors[first[k]]`` and ``vectors[second[k]]`` for each pair ``k``."""
    unit = F.normalize(vectors.double(), dim=-1)
    chunk = max(1, 2**22 // unit.shape[1])  # bounded memory for wide vectors (raw pixels)
    first, second = torch.as_tensor(first), torch.as_tensor(second)
    parts = [
        (unit[first[k : k + chunk]] * unit[second[k : k + chunk]]).sum(-1)
        for k in range(0, len(first), chunk)
    ]
    return torch.cat(parts).numpy() if parts else np.zeros(0)


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a positive pair outscores a negative one, ties
    counting one half (the Mann-Whitney U statistic, with average ranks for tied scores)."""
    positives, negatives = int(same.sum()), int((~same).sum())
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, ties averaged
    return float((ranks[same].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def accept_reject_rates(scores: np.ndarray, same: np.ndarray, threshold: float) -> tuple[float, float]:
    """True-accept rate (positives scoring ``>= threshold``) and true-reject rate (negatives below)."""
    return float((scores[same] >= threshold).mean()), float((scores[~same] < threshold).mean())


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold with the highest verification accuracy (mean of the true-accept and true-reject
    rates) on these pairs, and that accuracy. Of equal thresholds the highest is taken, placed midway
    between the lowest score it accepts and the next lower score (the same decisions here, a margin
    for new pairs)."""
    values, inverse = np.unique(scores, return_inverse=True)  # ascending
    pos = np.bincount(inverse, weights=same, minlength=len(values))[::-1]  # descending from here
    neg = np.bincount(inverse, weights=~same, minlength=len(values))[::-1]
    values = values[::-1]
    # accepting the k highest distinct scores (k = 0: none)
    accepted_pos = np.concatenate([[0.0], np.cumsum(pos)]) / max(pos.sum(), 1)
    rejected_neg = 1 - np.concatenate([[0.0], np.cumsum(neg)]) / max(neg.sum(), 1)
    accuracy = (accepted_pos + rejected_neg) / 2
    k = int(np.argmax(accuracy))
    if k == 0:
        threshold = float(np.nextafter(values[0], np.inf))
    elif k == len(values):
        threshold = float(values[-1])
    else:
        threshold = float((values[k - 1] + values[k]) / 2)
    return threshold, float(accuracy[k])


def rank1_identification(vectors: torch.Tensor, people: np.ndarray) -> tuple[float, int]:
    """Leave-one-out rank-1: the share of images whose most similar *other* image (cosine) shows the
    same person, over the images whose person has another image in the split; and that count."""
    unit = F.normalize(vectors.double(), dim=-1)
    people_t = torch.as_tensor(people)
    n = len(unit)
    block = max(1, 2**22 // max(n, 1))
    nearest = []
    for start in range(0, n, block):
        sims = unit[start : start + block] @ unit.T  # (b, N)
        rows = torch.arange(len(sims))
        sims[rows, rows + start] = -math.inf  # not itself
        nearest.append(sims.argmax(dim=1))
    hit = people_t[torch.cat(nearest)] == people_t
    queries = torch.as_tensor(np.bincount(people)[people] > 1)
    count = int(queries.sum())
    return (float(hit[queries].double().mean()) if count else 0.0), count


__all__ = ["FaceEmbeddingModel", "FaceVerificationTask", "VerificationMetric", "best_threshold", "roc_auc",
           "verification_pairs"]  # fmt: skip
