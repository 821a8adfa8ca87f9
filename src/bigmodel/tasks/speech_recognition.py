"""Speech recognition: speech to text with a CTC acoustic model over characters.

Clips come from manifests (``audio:FILE.csv`` / ``.jsonl`` with a path column and a transcript column,
``data.label``, default ``text``), a built-in set (``builtin:asterisk-en``) or any records with an audio
column (``data.audio``, default ``audio``). Each clip is decoded to mono at ``task.sample_rate`` and
turned into log-mel (or MFCC) features normalised per band with the train split's statistics, as in
``audio_classification``; transcripts are normalised (``task.text_normalize: basic``: lower case,
letters, digits, apostrophes and single spaces) and spelled as characters of a vocabulary fitted on
the train split, id 0 being the CTC blank.

The model: a convolutional front end (``task.subsample`` x fewer frames, stride-2 3x3 convolutions
over (features, frames)) whose per-frame outputs a recurrent family (``rnn``: bidirectional GRU/LSTM,
``head: tagging``) reads, then a linear layer to the vocabulary. The loss is ``F.ctc_loss`` summed over
the batch with ``num_items`` = target characters, so the loop reports (and the learning rate sees) the
loss per character whatever the utterances' lengths. Decoding is greedy (best path) or a CTC prefix
beam search (``task.decode: beam``, ``task.beam_width``). The metric streams character and word edit
distances and reference lengths (sums), giving CER and WER as jiwer computes them over a corpus.
Predict takes WAV paths, bytes, arrays or records and returns ``{"text"}``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bigmodel.data.audio_features import FeatureSpec, features
from bigmodel.data.audio_transforms import spec_augment, speed_factor
from bigmodel.data.records import Records
from bigmodel.errors import DataError, RecipeError, UserError, did_you_mean
from bigmodel.models.registry import build_config
from bigmodel.tasks.audio import AudioTask, Transcribed
from bigmodel.tasks.audio_classification import AudioAugmentOptions, FeatureOptions
from bigmodel.tasks.base import (
    ExportSignature,
    Metric,
    batch_signature,
    record_schema,
)


def soundfile_info(path):
    import soundfile  # imported on use, as data/audio.py does

    return soundfile.info(str(path))


class SpeechRecognitionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_rate: int = Field(16000, ge=1000, le=384000, description="Hz every clip is resampled to")
    resample: bool = Field(True, description="resample clips stored at another rate (false: refuse them)")
    features: FeatureOptions = FeatureOptions()
    normalize: Literal["dataset", "none"] = Field(
        "dataset", description="per-band mean/std of the train split's features, or none"
    )
    text_normalize: Literal["basic", "none"] = Field(
        "basic",
        description="basic: lower case; letters, digits, apostrophes and single spaces kept; none: as given",
    )
    augment: AudioAugmentOptions = AudioAugmentOptions()
    subsample: Literal[1, 2, 4, 8] = Field(
        4, description="frames per output step of the convolutional front end (stride-2 convolutions)"
    )
    conv_channels: int = Field(32, ge=1, le=1024, description="channels of the front end's convolutions")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before the output layer")
    decode: Literal["greedy", "beam"] = Field("greedy", description="CTC decoding: best path or beam search")
    beam_width: int = Field(8, ge=1, le=1024, description="prefixes kept by the beam search")


# --- CTC decoding and edit distances -----------------------------------------------------------------


def greedy_decode(log_probs: torch.Tensor | np.ndarray, blank: int = 0) -> list[int]:
    """Best path of ``(T, C)`` scores: the most likely class per frame, repeats merged, blanks dropped."""
    best = np.asarray(torch.as_tensor(log_probs).argmax(dim=-1))
    keep = (best != blank) & np.concatenate([[True], best[1:] != best[:-1]])
    return best[keep].tolist()


def prefix_beam_search(
    log_probs: torch.Tensor | np.ndarray, beam_width: int = 8, blank: int = 0
) -> list[int]:
    """The most likely labelling of ``(T, C)`` log-probabilities by CTC prefix beam search.

    Each prefix keeps two log-probabilities: of the frames so far ending in a blank, and ending in its
    last label. Extending by the label it ends with counts only the paths through a blank; paths that
    repeat the last label stay on the same prefix. Per frame the ``beam_width`` likeliest labels are
    tried and the ``beam_width`` likeliest prefixes kept. With a beam at least as wide as the number of
    prefixes the search is exact: it returns the labelling of highest total probability."""
    scores = np.asarray(torch.as_tensor(log_probs, dtype=torch.float64))
    T, C = scores.shape
    tried = min(C, beam_width + 1)
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
    for t in range(T):
        frame = scores[t]
        labels = [int(c) for c in np.argsort(-frame)[:tried] if c != blank]
        grown: dict[tuple[int, ...], list[float]] = {}

        def add(prefix, which, value, grown=grown):
            slot = grown.setdefault(prefix, [-math.inf, -math.inf])
            slot[which] = np.logaddexp(slot[which], value)

        for prefix, (p_blank, p_label) in beams.items():
            total = np.logaddexp(p_blank, p_label)
            add(prefix, 0, total + frame[blank])
            for c in labels:
                if prefix and prefix[-1] == c:
                    add(prefix + (c,), 1, p_blank + frame[c])  # a new c needs a blank in between
                    add(prefix, 1, p_label + frame[c])  # the same c held one more frame
                else:
                    add(prefix + (c,), 1, total + frame[c])
        ranked = sorted(grown.items(), key=lambda kv: -np.logaddexp(*kv[1]))[:beam_width]
        beams = {prefix: (b, lab) for prefix, (b, lab) in ranked}
    return list(max(beams.items(), key=lambda kv: np.logaddexp(*kv[1]))[0])


def edit_distance(reference, hypothesis) -> int:
    """Levenshtein distance (substitutions, deletions, insertions) between two sequences."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, h in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h))
        previous = current
    return previous[-1]


# --- the acoustic model ------------------------------------------------------------------------------


class CTCOutputs(NamedTuple):
    log_probs: torch.Tensor  # (B, T', C): log-softmax over blank + characters
    lengths: torch.Tensor  # (B,): real output frames of each clip


def subsampled(frames: torch.Tensor | int, subsample: int):
    """Frames after ``log2(subsample)`` stride-2 convolutions (kernel 3, padding 1): ceil halvings."""
    for _ in range(int(math.log2(subsample))):
        frames = (frames + 1) // 2
    return frames


class CTCModel(nn.Module):
    """Conv front end -> ``backbone.encode`` (a recurrent family reading float frames) -> linear.

    Args:
        backbone: a headless family whose ``encode(x (B, T', D), mask (B, T'))`` gives ``(B, T', H)``.
        num_features: feature rows per frame (mel bands or MFCCs).
        num_outputs: classes, blank included.
        channels: convolution channels.
        subsample: 1, 2, 4 or 8: the front end divides the frames by it (rounding up).
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_outputs: int, channels: int,
                 subsample: int, dropout: float = 0.0):  # fmt: skip
        super().__init__()
        self.subsample = subsample
        steps = int(math.log2(subsample))
        layers, width = [], 1
        for i in range(max(steps, 1)):
            stride = 2 if i < steps else 1
            layers += [nn.Conv2d(width, channels, 3, stride=stride, padding=1), nn.GELU()]
            width = channels
        self.front = nn.Sequential(*layers)
        self.backbone = backbone
        self.drop = nn.Dropout(dropout)
        self.output = nn.Linear(backbone.feature_dim, num_outputs)

    @staticmethod
    def front_width(num_features: int, channels: int, subsample: int) -> int:
        """Width of one front-end output frame: channels x the halved feature rows."""
        return channels * subsampled(num_features, subsample)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> CTCOutputs:
        """``x`` (B, F, T) features, ``lengths`` (B,) real frames -> :class:`CTCOutputs`."""
        h = self.front(x.unsqueeze(1))  # (B, C, F', T')
        B, C, Fr, T = h.shape
        h = h.permute(0, 3, 1, 2).reshape(B, T, C * Fr)  # (B, T', C * F')
        out_lengths = subsampled(lengths, self.subsample).clamp(min=1, max=T)
        mask = (torch.arange(T, device=x.device)[None, :] < out_lengths[:, None]).long()
        h = self.backbone.encode(h, mask)  # (B, T', H)
        return CTCOutputs(self.output(self.drop(h)).log_softmax(dim=-1), out_lengths)


# --- the task ----------------------------------------------------------------------------------------


class SpeechRecognitionTask(Transcribed, AudioTask):
    """Character-level CTC speech recognition; see the module docstring."""

    name = "speech_recognition"
    Options = SpeechRecognitionOptions
    predict_options = ("decode", "beam_width")
    metric_names = ("loss", "cer", "wer")
    higher_is_better = {"loss": False, "cer": False, "wer": False}
    state_types = {"audio": dict, "vocabulary": list, "transcript_column": str}

    def __init__(self, options, data: dict):
        super().__init__(options, data)  # audio_spec: rate, features, mean/std, pad: fitted on train
        self.vocabulary: list[str] = []  # characters; id = position + 1 (0 is the blank)
        self._index: dict[str, int] = {}
        self._notes: list[str] = []

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(**self.audio_spec["features"])

    @property
    def num_outputs(self) -> int:
        return len(self.vocabulary) + 1

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        if recipe.data.text is not None:
            raise RecipeError(
                f"data.text: task {self.name} reads audio ('{self.audio_column}') and its transcript "
                "(data.label, default 'text'); remove data.text."
            )
        if "input_size" not in family.config_fields() or not hasattr(family.model_cls, "encode"):
            raise RecipeError(
                f"model.arch: task {self.name} reads the front end's frames with a recurrent family that "
                f"takes float features (rnn: cell gru or lstm, bidirectional); '{family.name}' does not."
            )
        if recipe.model.pretrained:
            raise RecipeError(f"model.pretrained: task {self.name} trains from scratch.")
        for key in ("input_size", "vocab_size", "num_outputs", "head"):
            if key in recipe.model.options():
                raise RecipeError(f"model.{key}: set by the task; remove it from the recipe.")
        self._feature_spec(self.options.sample_rate)

    def notes(self) -> list[str]:
        return list(self._notes)

    def fit(self, train: Records) -> None:
        self._require_audio_column(train)
        self.text_column_name = self.text_column(train)
        texts = self.texts(train, "train")
        self.vocabulary = sorted(set("".join(texts)))
        if not self.vocabulary:
            raise DataError(f"{train.where} (train split): every transcript is empty; nothing to learn.")
        self._index = {c: i + 1 for i, c in enumerate(self.vocabulary)}
        rate = self.options.sample_rate
        spec = self._feature_spec(rate)
        n = spec.num_features
        self.audio_spec = {"sample_rate": rate, "features": spec.to_dict(), "mean": [0.0] * n,
                           "std": [1.0] * n, "pad": [0.0] * n}  # fmt: skip
        if self.options.normalize == "dataset":
            self.audio_spec["mean"], self.audio_spec["std"] = self.band_statistics(train, spec)

    def validate(self, records: Records, split: str) -> None:
        """Every clip decodes, and every transcript fits in its clip's output frames: CTC needs a frame
        per character plus one blank between repeated characters (checked before the run starts)."""
        self._require_audio_column(records)
        texts = self.texts(records, split)
        unseen: set[str] = set()
        spec, rate = self.feature_spec, self.audio_spec["sample_rate"]
        for i, text in enumerate(texts):
            where = f"{records.where} ({split} split), row {records.row_number(i)}"
            wave = self.load(records[i], where)
            steps = subsampled(spec.frames(wave.shape[-1]), self.options.subsample)
            ids = self.target_ids(text)
            needed = len(ids) + sum(a == b for a, b in zip(ids[:-1], ids[1:], strict=True))
            if needed > steps:
                raise DataError(
                    f"{where}: the transcript needs {needed} CTC steps ({len(text)} characters) but the "
                    f"{wave.shape[-1] / rate:.2f} s clip gives {steps} after the front end (task.subsample "
                    f"{self.options.subsample}, hop {self.options.features.hop_ms:g} ms). Check the "
                    "transcript, or lower task.subsample or task.features.hop_ms."
                )
            unseen |= set(text) - set(self._index)
        if unseen:
            self._notes.append(
                f"{split} split: characters not in the train vocabulary ({''.join(sorted(unseen))!r}) are "
                "left out of the loss targets and count as errors in CER/WER."
            )

    def _require_audio_column(self, records: Records) -> None:
        if self.audio_column not in records.columns:
            raise DataError(
                f"data.audio: column '{self.audio_column}' is not in {records.where}. Columns: "
                f"{', '.join(records.columns)}.{did_you_mean(self.audio_column, records.columns)}"
            )

    def target_ids(self, text: str) -> list[int]:
        """Character ids of a normalised transcript; characters outside the vocabulary are left out."""
        return [self._index[c] for c in text if c in self._index]

    def state(self) -> dict:
        return {
            **super().state(),
            "audio": self.audio_spec,
            "vocabulary": self.vocabulary,
            "transcript_column": self.text_column_name,
        }

    @classmethod
    def restore(cls, state, run_dir):
        task = super().restore(state, run_dir)
        spec, vocabulary = state.get("audio"), state.get("vocabulary")
        keys = {"sample_rate", "features", "mean", "std", "pad"}
        if not isinstance(spec, dict) or not keys <= set(spec):
            raise DataError(f"task.json: 'audio' must hold {', '.join(sorted(keys))}.")
        if not vocabulary or not all(isinstance(c, str) and len(c) == 1 for c in vocabulary):
            raise DataError("task.json: 'vocabulary' must be a non-empty list of single characters.")
        try:
            FeatureSpec(**spec["features"])
        except (TypeError, DataError) as exc:
            raise DataError(f"task.json: audio.features: {exc}") from None
        task.audio_spec, task.vocabulary = spec, list(vocabulary)
        task.text_column_name = state["transcript_column"]
        task._index = {c: i + 1 for i, c in enumerate(task.vocabulary)}
        return task

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        o = self.options
        n = self.feature_spec.num_features
        fixed = {"input_size": CTCModel.front_width(n, o.conv_channels, o.subsample), "vocab_size": 0,
                 "head": "tagging", "num_outputs": 0}  # fmt: skip
        defaults = {"cell": "gru", "bidirectional": True, "hidden_size": 128, "num_layers": 2}
        names = family.config_fields()
        config = {**{k: v for k, v in defaults.items() if k in names}, **options, **fixed}
        backbone = family.model_cls(build_config(family, config))
        return CTCModel(backbone, n, self.num_outputs, o.conv_channels, o.subsample, o.dropout)

    # -- examples -----------------------------------------------------------------------------------

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        aug = self.options.augment
        speed = speed_factor(aug.speed, rng) if rng is not None and aug.speed is not None else 1.0
        wave = self.load(example, "example", speed)
        if rng is not None:
            wave = self.augment_wave(wave, rng)
        x = features(wave, self.feature_spec)  # (F, frames)
        x = (x - torch.tensor(self.audio_spec["mean"])[:, None]) / torch.tensor(self.audio_spec["std"])[
            :, None
        ]
        if rng is not None and (aug.freq_masks or aug.time_masks):
            x = spec_augment(x, rng, aug.freq_masks, aug.freq_width, aug.time_masks, aug.time_width)
        column = self.text_column()
        text = self.normalize(example[column]) if isinstance(example.get(column), str) else None
        y = None if text is None else torch.tensor(self.target_ids(text), dtype=torch.long)
        return {"x": x, "y": y, "text": text}

    def length(self, example: dict) -> int | None:
        """Samples in the clip, from a file's header or an array's size (for ``train.group_by_length``:
        batches of similar length pad, and compute, far less — the prompts last 0.3 to 22 s)."""
        value = example.get(self.audio_column)
        if isinstance(value, (str, Path)):
            try:
                return int(soundfile_info(value).frames)
            except Exception:  # unreadable here: validate() refuses it, naming the row
                return None
        if isinstance(value, (np.ndarray, torch.Tensor)):
            return int(value.shape[0])
        return None

    def collate(self, items: list[dict]) -> dict:
        """``x`` (B, F, frames) padded with the pad value, ``lengths`` (B,); with transcripts also
        ``targets`` (B, S) padded with 0, ``target_lengths`` (B,) and ``texts``. ``num_items`` counts
        target characters (the loss is summed over them), or clips when there are none."""
        frames = max(item["x"].shape[-1] for item in items)
        pad = torch.tensor(self.audio_spec["pad"], dtype=items[0]["x"].dtype)[:, None]
        x = pad.expand(len(items), -1, frames).clone()  # (B, F, frames)
        for row, item in zip(x, items, strict=True):
            row[:, : item["x"].shape[-1]] = item["x"]
        batch = {"x": x, "lengths": torch.tensor([item["x"].shape[-1] for item in items]),
                 "num_items": len(items)}  # fmt: skip
        if all(item["y"] is not None for item in items):
            target_lengths = torch.tensor([len(item["y"]) for item in items])
            targets = torch.zeros(len(items), max(1, int(target_lengths.max())), dtype=torch.long)
            for row, item in zip(targets, items, strict=True):
                row[: len(item["y"])] = item["y"]
            texts = [item["text"] for item in items]
            batch |= {"targets": targets, "target_lengths": target_lengths, "texts": texts,
                      "num_items": max(1, int(target_lengths.sum()))}  # fmt: skip
        return batch

    def export_signature(self, model: nn.Module, batch: dict) -> ExportSignature:
        """``x`` (B, F, frames) features and ``lengths`` (B,) real frames -> CTC log-probabilities
        (B, T', V) and output lengths; batch and frames vary. CTC decoding stays outside the graph."""
        signature = batch_signature(model, batch, ["x", "lengths"], task=self.name)
        signature.dynamic["x"][2] = "frames"
        return signature

    def forward(self, model: nn.Module, batch: dict) -> CTCOutputs:
        return model(batch["x"], batch["lengths"])

    def check_outputs(self, outputs, batch: dict) -> None:
        if not isinstance(outputs, tuple) or len(outputs) != 2 or outputs[0].ndim != 3:
            raise UserError(
                f"task {self.name}: the model must return (log_probs (B, T, {self.num_outputs}), "
                "lengths (B,))."
            )

    def loss_from(self, outputs: CTCOutputs, batch: dict) -> torch.Tensor:
        """CTC loss summed over the batch; an utterance no alignment fits (speed perturbation made it
        too short) contributes 0 rather than inf (``zero_infinity``)."""
        log_probs = outputs.log_probs.float().transpose(0, 1)  # (T', B, C), as ctc_loss reads them
        return F.ctc_loss(log_probs, batch["targets"], outputs.lengths, batch["target_lengths"], blank=0,
                          reduction="sum", zero_infinity=True)  # fmt: skip

    def metric(self) -> Metric:
        return SpeechMetric(self)

    def decode(self, outputs: CTCOutputs) -> list[str]:
        """Text of each clip of a batch (greedy or beam, per ``task.decode``)."""
        texts = []
        for scores, n in zip(outputs.log_probs.detach().float().cpu(), outputs.lengths.cpu(), strict=True):
            scores = scores[: int(n)]
            if self.options.decode == "beam":
                ids = prefix_beam_search(scores, self.options.beam_width)
            else:
                ids = greedy_decode(scores)
            texts.append("".join(self.vocabulary[i - 1] for i in ids))
        return texts

    # -- prediction ---------------------------------------------------------------------------------

    def input_schema(self) -> dict:
        rate = self.audio_spec["sample_rate"]
        field = self.audio_field(
            "the speech: an audio file (WAV, FLAC, OGG, MP3) in base64, mixed to mono and resampled to "
            f"{rate} Hz"
        )
        return record_schema({self.audio_column: field}, [self.audio_column], "a spoken utterance")

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        return [{"text": text} for text in self.decode(self.forward(model, batch))]

    def report_rows(self, records, predictions: list[dict]) -> list[dict]:
        rows = []
        column = self.text_column()
        for i, (record, prediction) in enumerate(zip(records, predictions, strict=True)):
            value = record.get(self.audio_column)
            truth = self.normalize(record[column]) if isinstance(record.get(column), str) else None
            shown = Path(value).name if isinstance(value, (str, Path)) else f"clip {i + 1}"
            rows.append({"input": shown, "truth": truth, "prediction": prediction["text"],
                         "correct": None if truth is None else truth == prediction["text"]})  # fmt: skip
        return rows


class SpeechMetric(Metric):
    """Summed CTC loss and target characters; character and word edit distances of the decoded text
    against the reference and the references' lengths — all sums, so CER = char_errors / chars and
    WER = word_errors / words are corpus rates (as jiwer's over a list), mergeable across processes."""

    def __init__(self, task: SpeechRecognitionTask):
        super().__init__()
        self.task = task

    def update(self, outputs: CTCOutputs, batch: dict) -> None:
        log_probs = outputs.log_probs.float()
        self.count_non_finite(log_probs)
        rows = F.ctc_loss(log_probs.transpose(0, 1), batch["targets"], outputs.lengths,
                          batch["target_lengths"], blank=0, reduction="none", zero_infinity=True)  # fmt: skip
        self.add("loss", torch.nan_to_num(rows).sum())
        self.add("items", batch["target_lengths"].sum())
        self.add_texts(self.task.decode(outputs), batch["texts"])

    def add_texts(self, hypotheses: list[str], references: list[str]) -> None:
        """Add the edit distances of decoded texts against their references."""
        char_errors = word_errors = chars = words = exact = 0
        for hyp, ref in zip(hypotheses, references, strict=True):
            char_errors += edit_distance(ref, hyp)
            word_errors += edit_distance(ref.split(), hyp.split())
            chars += len(ref)
            words += len(ref.split())
            exact += hyp == ref
        for name, value in (("char_errors", char_errors), ("chars", chars), ("word_errors", word_errors),
                            ("words", words), ("exact", exact), ("utterances", len(references))):  # fmt: skip
            self.add(name, torch.tensor(value))

    def compute(self) -> dict:
        self.check_finite()
        utterances = int(self.sums.get("utterances", torch.tensor(0)))
        if not utterances:
            raise UserError("speech_recognition: no utterance in this split (it is empty).")
        chars, words = float(self.sums["chars"]), float(self.sums["words"])
        items = float(self.sums["items"])
        return {
            "loss": float(self.sums["loss"]) / max(items, 1.0),
            "cer": float(self.sums["char_errors"]) / chars if chars else float(self.sums["char_errors"] > 0),
            "wer": float(self.sums["word_errors"]) / words if words else float(self.sums["word_errors"] > 0),
            "exact_match": float(self.sums["exact"]) / utterances,
            "utterances": utterances,
        }
