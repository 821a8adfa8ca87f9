"""Text to speech: text -> log-mel frames with a non-autoregressive acoustic model (``fastspeech``),
frames -> wave with a vocoder (Griffin-Lim in torch, or the pretrained HiFi-GAN).

Records hold a ``text`` (``data.label`` names another column) and an ``audio`` clip (``data.audio``)
of it being spoken. Texts are normalised (``task.text_normalize: basic``: lower case, letters, digits,
apostrophes and single spaces, as speech_recognition scores them) and spelled with a vocabulary of the
train split's characters, or of ``task.symbols`` (id 0 is padding); a character outside it is refused
naming it and the allowed set. Each clip is decoded at 16 kHz and turned into the vocoders' features,
``TTS_MEL`` (80-band natural-log mel, hop 10 ms), normalised per band with the train split's mean and std.

Loss per utterance, summed over the batch (``num_items`` = utterances): mel L1 (or L2) over real
frames and bands, plus ``duration_weight`` x the MSE of the predicted log durations against the hard
alignment's, plus ``alignment_weight`` x the forward-sum loss (:func:`forward_sum_loss`: minus the log
of the total probability of every monotonic path through the soft alignment, per symbol), plus
``binarization_weight`` x the binarisation loss (the hard path's negative log soft alignment, per frame).

Evaluation: the losses on the split; with ``task.recogniser: RUN_DIR`` (a finished speech_recognition
run) also, on ``task.judge_samples`` evenly spaced examples of each split of ``task.judge_splits``,
the round trip: as image_generation's judge, ``forward`` synthesises the example's text (predicted
durations), vocodes it (``task.vocoder``), runs the recogniser on the wave and scores its text against
ours — character and word edit sums (speech_recognition's), so WER and CER merge across batches and
processes — and the mel-cepstral distance (dB, DTW-aligned) of the synthesis against the held-out
recording. Synthesis costs time: the judged count is an option.

Predict: a text, a list of texts, records ``{"text", "speaking_rate"}`` or a .csv/.jsonl of them ->
``{"text", "audio": Waveform, "seconds"}``; ``bigmodel predict RUN "three one four"`` writes the WAV.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bigmodel.data.audio import Waveform
from bigmodel.data.audio_features import features
from bigmodel.data.loader import to_device
from bigmodel.data.records import MarkedRecords, Records, evenly_spaced
from bigmodel.data.vocoders import TTS_MEL, load_vocoder
from bigmodel.errors import DataError, RecipeError, UserError, did_you_mean
from bigmodel.models.registry import build_config
from bigmodel.tasks.audio import AudioTask, Transcribed
from bigmodel.tasks.base import FILE_SCHEMES, Metric, is_data_file, number_field, read_inputs, record_schema
from bigmodel.tasks.speech_recognition import edit_distance

SPEED_RANGE = (0.25, 4.0)
# A request's speaking rate. Not "speed": data sets name their voices' words per minute so
# (builtin:digit-phrases-tts has speed 160), and a record is never read as a request by accident.
RATE_FIELD = "speaking_rate"
IMPOSSIBLE = -1e4  # log-probability of a state no path may take (per frame)


class TextToSpeechOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resample: bool = Field(
        True, description="resample clips stored at another rate than 16 kHz (false: refuse)"
    )
    text_normalize: Literal["basic", "none"] = Field(
        "basic",
        description="basic: lower case; letters, digits, apostrophes and single spaces; none: as given",
    )
    symbols: str | None = Field(
        None,
        description="the characters texts are spelled with (null: those of the train split's texts); a fixed "
        "set lets held-out texts use characters the train split lacks",
    )
    max_text_length: int = Field(200, ge=1, le=10_000, description="longest text (characters) accepted")
    normalize: Literal["dataset", "none"] = Field(
        "dataset", description="per-band mean/std of the train split's log-mels, or none"
    )
    mel_loss: Literal["l1", "l2"] = Field("l1", description="distance of predicted and target frames")
    duration_weight: float = Field(1.0, ge=0.0, description="weight of the log-duration MSE")
    alignment_weight: float = Field(1.0, ge=0.0, description="weight of the forward-sum alignment loss")
    binarization_weight: float = Field(
        0.0, ge=0.0, description="weight of the binarisation loss (hard path vs the soft alignment)"
    )
    speed: float = Field(1.0, ge=SPEED_RANGE[0], le=SPEED_RANGE[1], description="speaking rate of synthesis")
    vocoder: Literal["griffin-lim", "hifigan"] = Field(
        "griffin-lim", description="log-mel -> wave: griffin-lim (no package) or the pretrained hifigan"
    )
    recogniser: str | None = Field(
        None, description="a finished speech_recognition run that transcribes syntheses in evaluation"
    )
    judge_samples: int = Field(100, ge=1, description="examples synthesised and judged per judged split")
    judge_splits: list[Literal["validation", "test"]] = Field(
        ["test"], description="held-out splits on which syntheses are judged"
    )


# --- losses -----------------------------------------------------------------------------------------


def forward_sum_loss(
    log_alignment: torch.Tensor, text_lengths: torch.Tensor, mel_lengths: torch.Tensor
) -> torch.Tensor:
    """Per item ``(B,)``: minus the log of the summed probability of every monotonic path through
    ``log_alignment`` ``(B, T, N)`` (frame 0 on symbol 0, the last real frame on the last real symbol,
    each step the same symbol or the next; no blank), divided by the item's symbol count.

    The forward algorithm: ``alpha[t, n] = log p[t, n] + logaddexp(alpha[t-1, n], alpha[t-1, n-1])``,
    vectorised over the batch; each item's value is read at its own last frame."""
    B, T, N = log_alignment.shape
    # An impossible state scores IMPOSSIBLE, not -inf: logaddexp(-inf, -inf) has a NaN gradient.
    scores = log_alignment.float().clamp_min(IMPOSSIBLE)
    symbols = torch.arange(N, device=scores.device)
    scores = scores.masked_fill(symbols[None, None, :] >= text_lengths[:, None, None], IMPOSSIBLE)
    alpha = torch.cat([scores[:, 0, :1], scores.new_full((B, N - 1), IMPOSSIBLE)], dim=1)
    below = scores.new_full((B, 1), IMPOSSIBLE)
    last = text_lengths.long() - 1
    total = torch.where(mel_lengths == 1, alpha.gather(1, last[:, None])[:, 0], alpha.new_zeros(B))
    for t in range(1, T):
        previous = torch.cat([below, alpha[:, :-1]], dim=1)
        alpha = torch.logaddexp(alpha, previous) + scores[:, t]
        ends_here = mel_lengths == t + 1
        total = torch.where(ends_here, alpha.gather(1, last[:, None])[:, 0], total)
    return -total / text_lengths.float()


def per_item_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over each item's real entries: ``values`` ``(B, ...)``, ``keep`` broadcastable, 1 = real."""
    keep = keep.expand_as(values).to(values.dtype)
    return (values * keep).flatten(1).sum(1) / keep.flatten(1).sum(1).clamp_min(1)


class TTSOutputs(NamedTuple):
    """The model's outputs, and for the judged examples of an evaluation batch the recogniser's texts,
    the references they are scored against and each synthesis's mel-cepstral distance."""

    model: object  # FastSpeechOutputs
    hypotheses: list[str] | None = None
    references: list[str] | None = None
    mcd: list[float] | None = None


# --- evaluation splits: which examples are judged ----------------------------------------------------


# --- the task -----------------------------------------------------------------------------------------


class TextToSpeechTask(Transcribed, AudioTask):
    """Text -> speech with a ``fastspeech`` acoustic model and a vocoder (see the module docstring)."""

    name = "text_to_speech"
    Options = TextToSpeechOptions
    predict_options = ("speed", "vocoder")
    metric_names = ("loss", "mel_loss", "wer", "cer", "mcd")
    higher_is_better = {"loss": False, "mel_loss": False, "wer": False, "cer": False, "mcd": False}
    state_types = {"audio": dict, "vocabulary": list, "text_column": str}

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.vocabulary: list[str] = []
        self._index: dict[str, int] = {}
        self._judge = None  # (model, task) of the recogniser, once opened
        self._vocoder = None

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        if family.name != "fastspeech" and not hasattr(family.model_cls, "synthesise"):
            raise RecipeError(
                f"model.arch: task text_to_speech needs an acoustic model with forward(ids, mask, mels, "
                f"mel_lengths) and synthesise(ids, mask, speed) (fastspeech); '{family.name}' is not one."
            )
        fixed = [k for k in ("vocab_size", "n_mels") if k in recipe.model.options()]
        if fixed:
            raise RecipeError(
                f"model.{fixed[0]}: set by the task (the text's symbols, the vocoder's mels); remove it."
            )
        if recipe.model.pretrained:
            raise RecipeError(
                "model.pretrained: text_to_speech trains its acoustic model from scratch; remove it."
            )
        if self.options.recogniser is not None:
            self.recogniser()  # a judge that cannot be opened fails now, not after training

    def clean(self, records: Records, split: str) -> Records:
        if split == "train":
            return records
        judged = self.options.recogniser is not None and split in self.options.judge_splits
        picks = set(evenly_spaced(len(records), self.options.judge_samples).tolist()) if judged else set()
        return MarkedRecords(records, "_judged", [i in picks for i in range(len(records))])

    def checked_text(self, value, where: str) -> str:
        """The normalised text, or a DataError: not a string, empty, or longer than ``max_text_length``."""
        if not isinstance(value, str):
            raise DataError(f"{where}: expected a text, got {type(value).__name__} {value!r:.40}.")
        text = self.normalize(value)
        if not text:
            raise DataError(
                f"{where}: the text is empty{' after normalisation' if value.strip() else ''}: {value!r:.40}."
            )
        limit = self.options.max_text_length
        if len(text) > limit:
            raise DataError(
                f"{where}: the text has {len(text)} characters; at most {limit} (task.max_text_length)."
            )
        return text

    def fit(self, train: Records) -> None:
        self._require_audio(train)
        self.text_column_name = self.text_column(train)
        texts = self.texts(train, "train")
        symbols = self.options.symbols
        self.vocabulary = sorted(set(symbols if symbols is not None else "".join(texts)))
        if not self.vocabulary:
            raise DataError("task.symbols: empty; give the characters texts are spelled with.")
        self._index = {c: i + 1 for i, c in enumerate(self.vocabulary)}
        n = TTS_MEL.n_mels
        self.audio_spec = {"sample_rate": TTS_MEL.sample_rate, "features": TTS_MEL.to_dict(),
                           "mean": [0.0] * n, "std": [1.0] * n}  # fmt: skip
        if self.options.normalize == "dataset":
            self.audio_spec["mean"], self.audio_spec["std"] = self.band_statistics(train, TTS_MEL)

    def validate(self, records: Records, split: str) -> None:
        """Every text is spelled with the vocabulary and every clip decodes with at least as many frames
        as its text has characters (the alignment gives each character a frame)."""
        self._require_audio(records)
        for i, text in enumerate(self.texts(records, split)):
            where = f"{records.where} ({split} split), row {records.row_number(i)}"
            ids = self.symbol_ids(text, where)
            frames = TTS_MEL.frames(self.load(records[i], where).shape[-1])
            if frames < len(ids):
                raise DataError(
                    f"{where}: the clip gives {frames} frames for a text of {len(ids)} characters; each "
                    "character needs a frame at least (10 ms). Check the clip and its text."
                )

    def _require_audio(self, records: Records) -> None:
        if self.audio_column not in records.columns:
            raise DataError(
                f"data.audio: column '{self.audio_column}' is not in {records.where}. Columns: "
                f"{', '.join(records.columns)}.{did_you_mean(self.audio_column, records.columns)}"
            )

    def symbol_ids(self, text: str, where: str) -> list[int]:
        """The ids of a normalised text; a character outside the vocabulary is a DataError naming it."""
        unknown = sorted({c for c in text if c not in self._index})
        if unknown:
            raise DataError(
                f"{where}: the text {text!r:.60} holds {', '.join(map(repr, unknown))}, which the model was "
                f"not trained on. Allowed characters: {''.join(self.vocabulary)!r}."
            )
        return [self._index[c] for c in text]

    def state(self) -> dict:
        return {**super().state(), "audio": self.audio_spec, "vocabulary": self.vocabulary,
                "text_column": self.text_column_name}  # fmt: skip

    @classmethod
    def restore(cls, state, run_dir):
        task = super().restore(state, run_dir)
        spec, vocabulary = state["audio"], state["vocabulary"]
        if not {"sample_rate", "features", "mean", "std"} <= set(spec):
            raise DataError("task.json: 'audio' must hold sample_rate, features, mean and std.")
        if not vocabulary or not all(isinstance(c, str) and len(c) == 1 for c in vocabulary):
            raise DataError("task.json: 'vocabulary' must be a non-empty list of single characters.")
        if spec["features"] != TTS_MEL.to_dict():
            raise DataError("task.json: audio.features differ from the vocoders' TTS_MEL; retrain the run.")
        task.audio_spec, task.vocabulary = spec, list(vocabulary)
        task._index = {c: i + 1 for i, c in enumerate(task.vocabulary)}
        task.text_column_name = state["text_column"]
        return task

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        fixed = {"vocab_size": len(self.vocabulary) + 1, "n_mels": TTS_MEL.n_mels}
        return family.model_cls(build_config(family, {**options, **fixed}))

    # -- examples -----------------------------------------------------------------------------------

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        column = self.text_column()
        where = example.get("_where", "example")
        text = self.checked_text(example.get(column), f"{where}, column '{column}'")
        rate = float(example.get("_speaking_rate", self.options.speed))  # set by parse only
        item = {"ids": torch.tensor(self.symbol_ids(text, where)), "text": text, "speed": rate,
                "judged": False}  # fmt: skip
        if self.audio_column in example:
            wave = self.load(example, where)
            mel = (features(wave, TTS_MEL) - self._mean) / self._std  # (n_mels, frames)
            item["mel"] = mel.T.float()  # (frames, n_mels)
            if example.get("_judged"):
                item["judged"], item["wave"] = True, wave
        return item

    @property
    def _mean(self) -> torch.Tensor:
        return torch.tensor(self.audio_spec["mean"], dtype=torch.float32)[:, None]

    @property
    def _std(self) -> torch.Tensor:
        return torch.tensor(self.audio_spec["std"], dtype=torch.float32)[:, None]

    def length(self, example: dict) -> int | None:
        value = example.get(self.text_column())
        return len(value) if isinstance(value, str) else None

    def collate(self, items: list[dict]) -> dict:
        """``input_ids`` (B, N) padded with 0, ``attention_mask`` (B, N), ``texts``, ``speed`` (B,); with
        clips also ``mels`` (B, T, n_mels) padded with 0 and ``mel_lengths`` (B,), and the judged items'
        rows and waves. ``num_items`` counts utterances."""
        lengths = [len(item["ids"]) for item in items]
        ids = torch.zeros(len(items), max(lengths), dtype=torch.long)
        for row, item in zip(ids, items, strict=True):
            row[: len(item["ids"])] = item["ids"]
        batch = {"input_ids": ids, "attention_mask": (ids != 0).long(),
                 "texts": [item["text"] for item in items],
                 "speed": torch.tensor([item["speed"] for item in items]),
                 "num_items": len(items)}  # fmt: skip
        if all("mel" in item for item in items):
            frames = [item["mel"].shape[0] for item in items]
            mels = torch.zeros(len(items), max(frames), TTS_MEL.n_mels)
            for row, item in zip(mels, items, strict=True):
                row[: item["mel"].shape[0]] = item["mel"]
            batch |= {"mels": mels, "mel_lengths": torch.tensor(frames)}
            judged = [i for i, item in enumerate(items) if item["judged"]]
            if judged:
                batch |= {"judged": judged, "waves": [items[i]["wave"] for i in judged]}
        return batch

    def forward(self, model: nn.Module, batch: dict) -> TTSOutputs:
        outputs = model(batch["input_ids"], batch["attention_mask"], batch["mels"], batch["mel_lengths"])
        if model.training or "judged" not in batch or self.options.recogniser is None:
            return TTSOutputs(outputs)
        rows = batch["judged"]
        waves = self.synthesise(model, batch["input_ids"][rows], batch["attention_mask"][rows],
                                batch["speed"][rows])  # fmt: skip
        hypotheses = self.recognise(waves)
        from bigmodel.evaluation.speech_quality import mel_cepstral_distance  # a leaf of evaluation/

        rate = self.vocoder().sample_rate
        mcd = [mel_cepstral_distance(real.cpu().numpy(), fake.samples, rate)
               for real, fake in zip(batch["waves"], waves, strict=True)]  # fmt: skip
        return TTSOutputs(outputs, hypotheses, [batch["texts"][i] for i in rows], mcd)

    def check_outputs(self, outputs, batch: dict) -> None:
        inner = outputs.model if isinstance(outputs, TTSOutputs) else outputs
        if not hasattr(inner, "log_alignment") or inner.mel.shape != batch["mels"].shape:
            raise UserError(
                f"task {self.name}: the model must return FastSpeechOutputs with mel "
                f"{tuple(batch['mels'].shape)}."
            )

    def loss_terms(self, outputs, batch: dict) -> dict[str, torch.Tensor]:
        """Each loss per utterance ``(B,)``: mel, duration, alignment and binarisation."""
        out = outputs.model if isinstance(outputs, TTSOutputs) else outputs
        mel_keep = (torch.arange(batch["mels"].shape[1], device=out.mel.device)[None, :]
                    < out.mel_lengths[:, None])[..., None]  # fmt: skip
        distance = (
            (lambda a, b: (a - b).abs()) if self.options.mel_loss == "l1" else (lambda a, b: (a - b) ** 2)
        )
        target = batch["mels"].to(out.mel.dtype)
        mel = per_item_mean(distance(out.mel, target), mel_keep)
        if out.mel_decoder is not out.mel:  # a postnet: its input is trained to be right too
            mel = mel + per_item_mean(distance(out.mel_decoder, target), mel_keep)
        keep = batch["attention_mask"] != 0
        text_lengths = keep.sum(1)
        target_log = torch.log(out.durations.clamp_min(1).float())
        duration = per_item_mean((out.log_durations.float() - target_log) ** 2, keep)
        alignment = forward_sum_loss(out.log_alignment, text_lengths, out.mel_lengths)
        hard = out.hard_alignment.bool()
        picked = out.log_alignment.float().masked_fill(~hard, 0.0)
        binarization = -picked.flatten(1).sum(1) / out.mel_lengths.float()
        return {"mel_loss": mel.float(), "duration_loss": duration, "alignment_loss": alignment,
                "binarization_loss": binarization}  # fmt: skip

    def combine(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        o = self.options
        return (terms["mel_loss"] + o.duration_weight * terms["duration_loss"]
                + o.alignment_weight * terms["alignment_loss"]
                + o.binarization_weight * terms["binarization_loss"])  # fmt: skip

    def loss_from(self, outputs, batch: dict) -> torch.Tensor:
        return self.combine(self.loss_terms(outputs, batch)).sum()

    def metric(self) -> Metric:
        return TTSMetric(self)

    # -- synthesis and the judge --------------------------------------------------------------------

    def vocoder(self):
        if self._vocoder is None:
            self._vocoder = load_vocoder(self.options.vocoder)
        return self._vocoder

    def log_mels(self, model: nn.Module, input_ids, attention_mask, speed) -> list[torch.Tensor]:
        """Predicted natural-log mels ``(n_mels, frames)`` per item (normalisation undone)."""
        out = model.synthesise(input_ids, attention_mask, speed)
        mean, std = self._mean.to(out.mel.device), self._std.to(out.mel.device)
        mels = []
        for mel, n in zip(out.mel.float(), out.mel_lengths.tolist(), strict=True):
            mels.append((mel[:n].T * std + mean).cpu())
        return mels

    def synthesise(self, model: nn.Module, input_ids, attention_mask, speed) -> list[Waveform]:
        """One :class:`Waveform` per item: predicted frames through the task's vocoder."""
        vocoder = self.vocoder()
        waves = []
        for log_mel in self.log_mels(model, input_ids, attention_mask, speed):
            samples = vocoder(log_mel.clamp_min(math.log(1e-5))).numpy()
            if not np.isfinite(samples).all():
                raise UserError(
                    "text_to_speech: the vocoder produced NaN or inf samples; the model may be damaged."
                )
            waves.append(Waveform(samples.astype(np.float32), vocoder.sample_rate))
        return waves

    def recogniser(self):
        """``(model, task)`` of ``task.recogniser``: a speech_recognition run."""
        if self._judge is not None:
            return self._judge
        from bigmodel.rundir import open_run  # the wiring module; imported late, as it imports tasks

        path = self.options.recogniser
        model, task, _ = open_run(path)
        if not (hasattr(task, "decode") and hasattr(task, "audio_column") and hasattr(task, "vocabulary")):
            raise RecipeError(
                f"task.recogniser: '{path}' is a {task.name} run; the recogniser must be a "
                "speech_recognition run."
            )
        self._judge = (model.eval(), task)
        return self._judge

    @torch.no_grad()
    def recognise(self, waves: list[Waveform]) -> list[str]:
        """The recogniser's text of each wave (resampled to its rate by its own loading)."""
        model, task = self.recogniser()
        device = next(iter(model.parameters())).device
        records = [{task.audio_column: {"array": w.samples, "sampling_rate": w.sample_rate}} for w in waves]
        batch = task.collate([task.encode(r, None) for r in records])
        return task.decode(task.forward(model, to_device(batch, device)))

    # -- prediction ---------------------------------------------------------------------------------

    def parse(self, raw) -> list[dict]:
        """A text, a list of texts, records ``{"text", "speaking_rate"}`` (or a list of them) or a
        .csv/.jsonl file of records (its other columns ignored). A ``Path`` that names no data file is a
        text (``bigmodel predict RUN "one two"`` hands the words over as a path). Each text is checked
        here, naming it."""
        column = self.text_column()

        def as_record(value):
            if isinstance(value, Path) and value.suffix.lower() not in FILE_SCHEMES:
                value = str(value)
            if isinstance(value, str) and Path(value).suffix.lower() not in FILE_SCHEMES:
                return {column: value}
            return value

        raw = [as_record(r) for r in raw] if isinstance(raw, (list, tuple)) else as_record(raw)
        if isinstance(raw, (list, tuple)) and not raw:
            raise DataError("inputs: nothing to synthesise (an empty list).")
        if isinstance(raw, str):
            raw = Path(raw)
        from_file = is_data_file(raw)  # a data file's other columns (its recordings, voices) are not inputs
        inputs = read_inputs(raw)
        examples = []
        for record, row in zip(inputs.records, inputs.rows, strict=True):
            where = (
                f"{inputs.where}: row {row}"
                if len(inputs.records) > 1 or inputs.where != "inputs"
                else "inputs"
            )
            unknown = sorted(set(record) - {column, RATE_FIELD, self.audio_column})
            if unknown and not from_file:
                raise DataError(
                    f"{where}: unknown field '{unknown[0]}'; a request has '{column}' and '{RATE_FIELD}'."
                )
            text = self.checked_text(record.get(column), f"{where}, '{column}'")
            self.symbol_ids(text, where)
            rate = record.get(RATE_FIELD, self.options.speed)
            low, high = SPEED_RANGE
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not low <= rate <= high:
                raise DataError(f"{where}: '{RATE_FIELD}' must be a number in [{low}, {high}], got {rate!r}.")
            examples.append({column: text, "_speaking_rate": float(rate), "_where": where})
        return examples

    def input_schema(self) -> dict:
        column = self.text_column()
        fields = {
            column: {"type": "string", "minLength": 1, "maxLength": self.options.max_text_length,
                     "x-bigmodel-kind": "text",
                     "description": f"the text to speak, in the characters {''.join(self.vocabulary)!r}"},
            RATE_FIELD: number_field("1 as trained, 2 twice as fast", minimum=SPEED_RANGE[0],
                                  maximum=SPEED_RANGE[1], default=self.options.speed),
        }  # fmt: skip
        return record_schema(fields, [column], "a text to synthesise")

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        """Per text: ``{"text", "audio": Waveform, "seconds"}``."""
        waves = self.synthesise(model, batch["input_ids"], batch["attention_mask"], batch["speed"])
        return [{"text": text, "audio": wave, "seconds": round(wave.seconds, 3)}
                for text, wave in zip(batch["texts"], waves, strict=True)]  # fmt: skip


class TTSMetric(Metric):
    """Summed per-utterance losses and utterances; for judged syntheses the recogniser's character and
    word edit sums (speech_recognition's), and the summed mel-cepstral distance."""

    def __init__(self, task: TextToSpeechTask):
        super().__init__()
        self.task = task

    def update(self, outputs: TTSOutputs, batch: dict) -> None:
        self.count_non_finite(outputs.model.mel)
        terms = self.task.loss_terms(outputs, batch)
        self.add("loss", torch.nan_to_num(self.task.combine(terms)).sum())
        for name, value in terms.items():
            self.add(name, torch.nan_to_num(value).sum())
        self.add("utterances", torch.tensor(len(batch["texts"])))
        if outputs.hypotheses is None:
            return
        sums = {"char_errors": 0, "chars": 0, "word_errors": 0, "words": 0, "exact": 0}
        for hyp, ref in zip(outputs.hypotheses, outputs.references, strict=True):
            sums["char_errors"] += edit_distance(ref, hyp)
            sums["word_errors"] += edit_distance(ref.split(), hyp.split())
            sums["chars"] += len(ref)
            sums["words"] += len(ref.split())
            sums["exact"] += hyp == ref
        for name, value in sums.items():
            self.add(name, torch.tensor(value))
        self.add("judged", torch.tensor(len(outputs.hypotheses)))
        self.add("mcd_sum", torch.tensor(float(sum(outputs.mcd))))

    def compute(self) -> dict:
        self.check_finite()
        n = float(self.sums.get("utterances", torch.tensor(0.0)))
        if not n:
            raise UserError("text_to_speech: no utterance in this split (it is empty).")
        names = ("loss", "mel_loss", "duration_loss", "alignment_loss", "binarization_loss")
        out = {name: float(self.sums[name]) / n for name in names}
        out["utterances"] = int(n)
        judged = int(self.sums.get("judged", torch.tensor(0)))
        if judged:
            chars, words = float(self.sums["chars"]), float(self.sums["words"])
            out |= {"wer": float(self.sums["word_errors"]) / max(words, 1.0),
                    "cer": float(self.sums["char_errors"]) / max(chars, 1.0),
                    "exact_match": float(self.sums["exact"]) / judged,
                    "mcd": float(self.sums["mcd_sum"]) / judged, "judged": judged,
                    "vocoder": self.task.options.vocoder}  # fmt: skip
        return out
