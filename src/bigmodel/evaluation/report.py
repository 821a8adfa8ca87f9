"""The run report: one static HTML page, ``report.html``, that says what a run did and how well.

The page is self-contained so it opens offline, from a mail attachment or a CI artifact: inline CSS,
no JavaScript, every chart a PNG drawn with matplotlib's object API (``Figure`` + the Agg canvas:
no pyplot, no global backend switch, safe in a server thread) and embedded as a base64 data URL.

It is generic over tasks: the curves plot whatever numbers the evaluation lines of metrics.jsonl hold
(accuracy, F1, perplexity, mIoU, mAP, ...), the tables whatever eval.json holds. A missing or damaged
file makes its section say so; only a folder that is not a run at all is an error (RunDirError).
Everything that comes from files or rows (names, labels, texts) is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel.data.io import atomic_write_text
from bigmodel.errors import UserError
from bigmodel.evaluation.runs import (
    MetricsLog,
    RunFiles,
    is_number,
    read_metrics_log,
    read_run,
    run_date,
)

REPORT = "report.html"
COMPRESS_REPORT = Path("compress") / "report.json"
DPI = 100  # ~30-60 kB per chart: a report stays well under a few MB
MAX_POINTS = 5000  # a longer curve is drawn as BUCKETS bucket means (a million-step run stays light)
BUCKETS = 2000
MAX_EXAMPLES = 24
MAX_METRIC_CHARTS = 30
ANNOTATE_MAX = 20  # confusion matrices up to this many classes show their counts
TICKS_MAX = 50  # ... and up to this many their class names
TEXT_MAX = 400  # characters of a text example shown
THUMB = 160  # largest side of an example image, in pixels
# Training-line keys that are bookkeeping, not curves (loss and lr have their own charts).
TRAIN_KEYS = {"step", "epoch", "loss", "lr", "samples_per_s", "time"}
EVAL_KEYS = {"step", "epoch", "split", "loss"}
COLORS = {"train": "#1f77b4", "validation": "#d62728", "test": "#2ca02c"}


@dataclass
class Section:
    id: str
    title: str
    body: str


def write_report(
    run_dir: str | os.PathLike,
    rows: Sequence[Mapping] | None = None,
    path: str | os.PathLike | None = None,
    examples_note: str | None = None,
) -> Path:
    """Write the HTML report of a run.

    Args:
        run_dir: a run directory (or a :class:`~bigmodel.rundir.Run`).
        rows: examples to show (``Task.report_rows``): dicts with ``input`` (str or PIL image),
            ``truth``, ``prediction``, ``correct`` (bool or None); misclassified ones first, at most 24.
        path: where to write; default ``run_dir/report.html``.
        examples_note: without ``rows``, why there are none (the data moved, the run is unfinished):
            the examples section says so.

    Returns:
        The path written.

    Raises:
        RunDirError: ``run_dir`` is not a run directory.
        UserError: ``rows`` is not a list of dicts.
    """
    run = read_run(run_dir)
    if rows is not None:
        _check_rows(rows)
    log = read_metrics_log(run.path / "metrics.jsonl")
    sections = [
        _overview(run),
        _final_metrics(run),
        *_curves(run, log),
        _confusion_section(run),
        _per_class_section(run),
    ]
    if rows is not None:
        sections.append(_examples(rows))
    elif examples_note:
        sections.append(Section("examples", "Examples", note(examples_note)))
    if (run.path / COMPRESS_REPORT).is_file():
        sections.append(_compression(run.path / COMPRESS_REPORT))
    out = Path(path) if path is not None else run.path / REPORT
    atomic_write_text(out, _page(run, [s for s in sections if s is not None]))
    return out


# --- formatting --------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """Text for HTML (element content and quoted attributes)."""
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A number as a person reads it in a table (escaped); anything else as text."""
    if isinstance(value, bool) or value is None:
        return esc("—" if value is None else value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return esc(value)
        if value == 0 or 1e-3 <= abs(value) < 1e4:
            return f"{value:.4f}"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.1f}"
    return esc(value)


def duration(seconds: Any) -> str:
    if not is_number(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    return f"{minutes // 60} h {minutes % 60} min"


def note(text: str) -> str:
    """A warning: something could not be read or shown."""
    return f'<p class="note">{esc(text)}</p>'


def info(text: str) -> str:
    """A remark that explains a number (how an average was taken)."""
    return f'<p class="info">{esc(text)}</p>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """A table from already-escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# --- charts ------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig) -> str:
    """The figure as a ``data:image/png;base64,...`` URL."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(fig, alt: str) -> str:
    return f'<img class="chart" src="{_png(fig)}" alt="{esc(alt)}">'


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS, buckets: int = BUCKETS):
    """``(x, y, downsampled)``: a curve of more than ``max_points`` points becomes ``buckets`` means of
    consecutive points (keeps the trend and the extent of the steps; a stride would alias noise)."""
    n = len(x)
    if n <= max_points:
        return x, y, False
    starts = np.linspace(0, n, buckets + 1).astype(int)[:-1]
    sizes = np.diff(np.append(starts, n))
    return np.add.reduceat(x, starts) / sizes, np.add.reduceat(y, starts) / sizes, True


def _series(lines: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, int]:
    """``(steps, values, left_out)`` of ``key`` over the lines, by step; non-finite values left out."""
    points = [(line["step"], line.get(key)) for line in lines if key in line]
    good = sorted((s, v) for s, v in points if is_number(v))
    steps = np.array([s for s, _ in good], dtype=np.float64)
    values = np.array([v for _, v in good], dtype=np.float64)
    return steps, values, len(points) - len(good)


def _smooth(values: np.ndarray) -> np.ndarray:
    """A centred moving average over ~1/20 of the curve (centred: no lag behind the raw curve; the
    window shrinks at the ends, where it is divided by the points it holds)."""
    window = max(3, len(values) // 20) | 1
    kernel = np.ones(window)
    return np.convolve(values, kernel, "same") / np.convolve(np.ones_like(values), kernel, "same")


def _plain(text: Any) -> str:
    """Text for a chart, drawn as written: a ``$`` would otherwise start matplotlib's math mode (and a
    malformed formula in a class name would fail the drawing)."""
    return str(text).replace("$", r"\$")


def _style(ax, xlabel: str, ylabel: str, title: str | None = None) -> None:
    ax.set_xlabel(_plain(xlabel))
    ax.set_ylabel(_plain(ylabel))
    if title:
        ax.set_title(_plain(title), fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _log_scale_if_wide(ax, values: list[np.ndarray]) -> None:
    joined = np.concatenate([v for v in values if len(v)]) if any(len(v) for v in values) else np.array([])
    if len(joined) and joined.min() > 0 and joined.max() / joined.min() > 100:
        ax.set_yscale("log")


# --- sections ----------------------------------------------------------------------------------------


def _overview(run: RunFiles) -> Section:
    recipe, stats = run.recipe or {}, run.train_stats
    data = run.data or {}
    model = run.model or {}
    family = run.family or "—"
    if model.get("adapter"):
        family += " + LoRA"
    params = stats.get("params")
    trainable = stats.get("trainable_params")
    param_text = fmt(params) if params is not None else "—"
    if is_number(trainable) and trainable != params:
        param_text += f" ({fmt(trainable)} trainable)"
    steps = f"{fmt(stats.get('steps'))} steps, {fmt(stats.get('epochs'))} epochs"
    if stats.get("stopped_early"):
        steps += ", stopped early"
    best = stats.get("best")
    if isinstance(best, dict) and is_number(best.get("value")):
        steps += f"; best {esc(best.get('metric'))} {fmt(best['value'])} at step {fmt(best.get('step'))}"
    speed = stats.get("samples_per_s")
    sizes = data.get("split_sizes") if isinstance(data.get("split_sizes"), dict) else {}
    items = [
        ("recipe", esc(run.name) + (f" — {esc(recipe['description'])}" if recipe.get("description") else "")),
        ("task", esc(run.task_name or "—")),
        ("model", esc(family)),
        ("parameters", param_text),
        ("training time", esc(duration(stats.get("time_s")))),
        ("steps", steps),
        ("throughput", f"{speed:,.0f} samples/s" if is_number(speed) else "—"),
        ("data", esc(data.get("source", (recipe.get("data") or {}).get("source", "—")))
         + (" — " + ", ".join(f"{esc(k)} {fmt(v)}" for k, v in sizes.items()) if sizes else "")),
        ("started", esc(run_date(run.path))),
        ("status", '<span class="pill ok">finished</span>' if run.finished
         else '<span class="pill warn">not finished (no manifest.json)</span>'),
        ("run directory", f"<code>{esc(run.path)}</code>"),
    ]  # fmt: skip
    body = "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"
    notes = data.get("notes") if isinstance(data.get("notes"), list) else []
    if notes:
        body += "<h3>Data notes</h3><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"
    problems = {k: v for k, v in run.problems.items() if k != "eval.json"}  # eval.json: its own sections
    if problems:
        body += note("Files that could not be read: " + "; ".join(f"{k}: {v}" for k, v in problems.items()))
    return Section("overview", "Overview", body)


def _eval_splits(run: RunFiles) -> dict[str, dict]:
    return run.eval if isinstance(run.eval, dict) else {}


def _final_metrics(run: RunFiles) -> Section:
    body = ""
    if run.eval is None:
        body += note(
            f"eval.json: {run.problems.get('eval.json', 'missing')}; the numbers below are summary.json's."
        )
    metrics = run.split_metrics()
    if not metrics:
        return Section("metrics", "Final metrics", body + note("No evaluated split: no metrics to show."))
    names = list(dict.fromkeys(k for values in metrics.values() for k in values))
    rows = [[esc(name), *(fmt(metrics[s].get(name)) for s in metrics)] for name in names]
    body += _table(["metric", *(esc(s) for s in metrics)], rows, "numbers")
    texts = {  # explanations a metric carries (how the macro average was taken)
        f"{key}: {value}" for split in _eval_splits(run).values() if isinstance(split, dict)
        for key, value in split.items() if isinstance(value, str)
    }  # fmt: skip
    body += "".join(info(text) for text in sorted(texts))
    return Section("metrics", "Final metrics", body)


def _curves(run: RunFiles, log: MetricsLog) -> list[Section]:
    """Loss, metric and learning-rate curves over the steps of metrics.jsonl."""
    problem = note(log.problem) if log.problem else ""
    if not log.train and not log.evals:
        return [Section("loss", "Loss", problem or note("metrics.jsonl holds no logged steps."))]
    return [_loss_section(run, log, problem), _metric_section(log), _lr_section(log)]


def _loss_section(run: RunFiles, log: MetricsLog, problem: str) -> Section:
    fig = _figure(9, 3.8)
    ax = fig.add_subplot()
    notes, drawn = [], []
    steps, loss, bad = _series(log.train, "loss")
    if bad:
        notes.append(f"{bad} non-finite training losses are left out.")
    steps, loss, thinned = downsample(steps, loss)
    if thinned:
        notes.append(f"The training curve is drawn as {BUCKETS:,} means of consecutive logged steps.")
    if len(loss):
        smooth = len(loss) >= 50
        ax.plot(steps, loss, color=COLORS["train"], lw=1, alpha=0.35 if smooth else 1, label="train")
        if smooth:
            ax.plot(steps, _smooth(loss), color=COLORS["train"], lw=1.8, label="train (smoothed)")
        drawn.append(loss)
    for split, lines in _by_split(log.evals).items():
        s, v, _ = _series(lines, "loss")
        if len(v):
            ax.plot(s, v, marker="o", ms=3, lw=1.5, color=COLORS.get(split), label=_plain(split))
            drawn.append(v)
    best = run.train_stats.get("best")
    if isinstance(best, dict) and is_number(best.get("step")):
        ax.axvline(
            best["step"],
            color="#777",
            ls="--",
            lw=1,
            label=_plain(f"best ({best.get('metric')}, step {best['step']})"),
        )
    if not drawn:
        return Section("loss", "Loss", problem + note("No finite loss was logged."))
    _log_scale_if_wide(ax, drawn)
    _style(ax, "step", "loss")
    ax.legend(frameon=False)
    body = problem + _img(fig, "loss per step") + "".join(note(n) for n in notes)
    return Section("loss", "Loss", body)


def _by_split(evals: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for line in evals:
        found.setdefault(str(line["split"]), []).append(line)
    return found


def _metric_section(log: MetricsLog) -> Section:
    """One small chart per number the evaluation lines (and extra training lines) hold."""
    charts = []
    splits = _by_split(log.evals)
    keys = [("eval", k) for k in dict.fromkeys(k for line in log.evals for k in line if k not in EVAL_KEYS)]
    keys += [
        ("train", k) for k in dict.fromkeys(k for line in log.train for k in line if k not in TRAIN_KEYS)
    ]
    for kind, key in keys:
        series = splits.items() if kind == "eval" else [("train", log.train)]
        fig = _figure(4.4, 2.9)
        ax = fig.add_subplot()
        drew = False
        for split, lines in series:
            s, v, _ = _series(lines, key)
            s, v, _ = downsample(s, v)
            if len(v):
                ax.plot(
                    s,
                    v,
                    marker="o" if len(v) <= 60 else None,
                    ms=3,
                    lw=1.5,
                    color=COLORS.get(split),
                    label=_plain(split),
                )
                drew = True
        if not drew:  # a non-numeric value (a list, a name): not a curve
            continue
        _style(ax, "step", "", key)
        if len(series) > 1:
            ax.legend(frameon=False, fontsize=8)
        charts.append(_img(fig, f"{key} per step"))
        if len(charts) == MAX_METRIC_CHARTS:
            break
    if not charts:
        body = note("No metric was logged during training (no validation split, or no evaluation yet).")
    else:
        body = f'<div class="grid">{"".join(charts)}</div>'
        if len(charts) == MAX_METRIC_CHARTS and len(keys) > MAX_METRIC_CHARTS:
            body += note(f"The first {MAX_METRIC_CHARTS} of {len(keys)} logged metrics are drawn.")
    return Section("curves", "Metrics during training", body)


def _lr_section(log: MetricsLog) -> Section:
    steps, lr, _ = _series(log.train, "lr")
    if not len(lr):
        return Section("lr", "Learning rate", note("No learning rate was logged."))
    if lr.min() == lr.max():  # a flat line says less than one sentence
        body = f"<p>Constant at {fmt(float(lr[0]))} over the {fmt(len(lr))} logged steps.</p>"
        return Section("lr", "Learning rate", body)
    steps, lr, _ = downsample(steps, lr)
    fig = _figure(9, 2.6)
    ax = fig.add_subplot()
    ax.plot(steps, lr, color="#9467bd", lw=1.5)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    _style(ax, "step", "learning rate")
    return Section("lr", "Learning rate", _img(fig, "learning rate per step"))


def _report_split(run: RunFiles, key: str) -> tuple[str, Any] | None:
    """``(split, value)`` of eval.json's ``key`` from test, else validation, else any split."""
    splits = _eval_splits(run)
    for name in ("test", "validation", *splits):
        if isinstance(splits.get(name), dict) and splits[name].get(key) is not None:
            return name, splits[name][key]
    return None


def _class_names(run: RunFiles, split: str, k: int) -> list[str]:
    per_class = _eval_splits(run)[split].get("per_class")
    if isinstance(per_class, list) and len(per_class) == k and all(isinstance(r, dict) for r in per_class):
        return [str(r.get("class", i)) for i, r in enumerate(per_class)]
    return [str(i) for i in range(k)]


def _confusion_section(run: RunFiles) -> Section | None:
    found = _report_split(run, "confusion_matrix")
    if found is None:
        return None
    split, matrix = found
    try:
        counts = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        counts = np.zeros((0, 1))
    k = counts.shape[0] if counts.ndim == 2 else 0
    if k == 0 or counts.shape != (k, k) or not np.isfinite(counts).all():
        return Section(
            "confusion",
            "Confusion matrix",
            note(f"eval.json {split}: confusion_matrix is not a square table of counts."),
        )
    names = _class_names(run, split, k)
    support = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)
    side = float(np.clip(1.6 + 0.34 * k, 4.0, 10.0))
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    if k <= TICKS_MAX:
        short = [_plain(n if len(n) <= 14 else n[:13] + "…") for n in names]
        ax.set_xticks(
            range(k), short, rotation=90 if max(map(len, short)) > 3 else 0, fontsize=8 if k > 20 else 10
        )
        ax.set_yticks(range(k), short, fontsize=8 if k > 20 else 10)
    if k <= ANNOTATE_MAX:
        for (i, j), count in np.ndenumerate(counts):
            if count:
                ax.text(j, i, _count(count), ha="center", va="center", fontsize=8 if k > 10 else 9,
                        color="white" if share[i, j] > 0.6 else "#222")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    caption = (
        f"{esc(split)} split, {k} classes. Rows are true classes, columns predictions; the colour is "
        "the share of the true class (each row sums to 1)"
        + ("; the numbers are counts." if k <= ANNOTATE_MAX else ".")
    )
    return Section(
        "confusion", "Confusion matrix", _img(fig, f"confusion matrix ({split})") + f"<p>{caption}</p>"
    )


def _count(value: float) -> str:
    value = int(value)
    return f"{value / 1e6:.1f}M" if value >= 1e6 else f"{value / 1e3:.1f}k" if value >= 1e4 else str(value)


def _per_class_section(run: RunFiles) -> Section | None:
    found = _report_split(run, "per_class")
    if found is None:
        return None
    split, rows = found
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return Section("per-class", "Per class", note(f"eval.json {split}: per_class is not a list of rows."))
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "absent"]
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = f'<table class="numbers per-class"><thead><tr>{head}</tr></thead><tbody>'
    for row in rows:
        cells = "".join(_bar_cell(row.get(c)) for c in columns)
        absent = (
            ' class="absent" title="absent from the labels and the predictions"' if row.get("absent") else ""
        )
        body += f"<tr{absent}>{cells}</tr>"
    body += "</tbody></table>"
    if any(r.get("absent") for r in rows):
        body += note("Greyed rows: classes absent from both the labels and the predictions of this split.")
    return Section("per-class", f"Per class ({split})", body)


def _bar_cell(value: Any) -> str:
    """A table cell; a share in [0, 1] gets a bar behind its number."""
    if isinstance(value, float) and 0.0 <= value <= 1.0:
        pct = round(100 * value, 1)
        bar = f"background:linear-gradient(90deg,#dbe8f7 {pct}%,transparent {pct}%)"
        return f'<td style="{bar}">{fmt(value)}</td>'
    return f"<td>{fmt(value)}</td>"


# --- examples ----------------------------------------------------------------------------------------


def _check_rows(rows: Any) -> None:
    """Refuse rows that are not a list of dicts (before any chart is drawn)."""
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise UserError(
            f"rows: expected a list of dicts (input, truth, prediction, correct), got {type(rows).__name__}."
        )
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise UserError(
                f"rows[{i}]: expected a dict (input, truth, prediction, correct); got {type(row).__name__}."
            )


def _examples(rows: Sequence[Mapping]) -> Section:
    order = {False: 0, None: 1, True: 2}  # misclassified first, then unjudged, then right
    ranked = sorted(rows, key=lambda r: order[_correct(r)])
    wrong = sum(_correct(r) is False for r in rows)
    judged = sum(_correct(r) is not None for r in rows)
    summary = f"{len(rows)} examples" + (f", {wrong} of {judged} misclassified" if judged else "")
    if len(rows) > MAX_EXAMPLES:
        summary += f"; the first {MAX_EXAMPLES} are shown, misclassified first"
    cards = "".join(_card(r) for r in ranked[:MAX_EXAMPLES])
    return Section("examples", "Examples", f'<p>{esc(summary)}.</p><div class="examples">{cards}</div>')


def _correct(row: Mapping) -> bool | None:
    value = row.get("correct")
    return None if value is None else bool(value)


def _card(row: Mapping) -> str:
    correct = _correct(row)
    cls, badge = {True: ("right", "✓ right"), False: ("wrong", "✗ wrong"), None: ("unjudged", "no label")}[
        correct
    ]
    truth = row.get("truth")
    lines = [f"<div>truth: <b>{esc(truth)}</b></div>"] if truth is not None else []
    lines.append(f"<div>prediction: <b>{esc(row.get('prediction'))}</b></div>")
    return (
        f'<figure class="example {cls}"><div class="input">{_input_html(row.get("input"))}</div>'
        f'<figcaption><span class="badge">{badge}</span>{"".join(lines)}</figcaption></figure>'
    )


def _input_html(value: Any) -> str:
    image = _as_image(value)
    if image is not None:
        width, height = image.size
        if max(width, height) > THUMB:
            image.thumbnail((THUMB, THUMB))
            width, height = image.size
        scale = max(1, 96 // max(width, height))  # tiny images (8×8 digits) drawn bigger, pixelated
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        return f'<img src="{url}" width="{width * scale}" height="{height * scale}" alt="input">'
    if isinstance(value, (Mapping, list, tuple)):
        value = json.dumps(value, default=str, ensure_ascii=False)
    text = "" if value is None else str(value)
    if len(text) > TEXT_MAX:
        text = text[: TEXT_MAX - 1] + "…"
    return f"<pre>{esc(text)}</pre>"


def _as_image(value: Any):
    """A PIL image (RGB or L) from a PIL image or an image-shaped array; None for anything else."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB" if value.mode not in ("L", "RGB") else value.mode)
    if isinstance(value, np.ndarray) and value.ndim in (2, 3) and value.dtype.kind in "uif" and value.size:
        array = value.astype(np.float64)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim == 3 and array.shape[-1] != 3:
            return None
        low, high = np.nanmin(array), np.nanmax(array)
        array = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
        return Image.fromarray(np.nan_to_num(array).astype(np.uint8))
    return None


# --- compression -------------------------------------------------------------------------------------


def _compression(path: Path) -> Section:
    title = "Compression trade-off"
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return Section("compression", title, note(f"compress/report.json cannot be read ({str(exc)[:120]})."))
    stages = found.get("stages") if isinstance(found, dict) else found
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        return Section(
            "compression", title, note("compress/report.json: expected a list of stages (objects).")
        )
    rows = [[esc(s.get("stage", "—")), fmt(s.get("metric")), _size(s.get("size_bytes")),
             _short(s.get("latency_ms_p50")), _short(s.get("throughput"))] for s in stages]  # fmt: skip
    table = _table(["stage", "metric", "size", "latency p50 (ms)", "throughput (/s)"], rows, "numbers")
    points = [s for s in stages if is_number(s.get("latency_ms_p50")) and is_number(s.get("metric"))]
    if not points:
        return Section(
            "compression", title, note("No stage has both a latency and a metric to plot.") + table
        )
    metric_name = next((str(s["metric_name"]) for s in stages if s.get("metric_name")), "metric")
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    sizes = np.array([s.get("size_bytes") if is_number(s.get("size_bytes")) else 0 for s in points], float)
    area = 40 + 400 * sizes / sizes.max() if sizes.max() > 0 else np.full(len(points), 60.0)
    x = [s["latency_ms_p50"] for s in points]
    y = [s["metric"] for s in points]
    ax.scatter(x, y, s=area, alpha=0.6, color="#1f77b4", edgecolor="#0b3d66")
    ax.plot(x, y, color="#999", lw=0.8, ls=":")
    for s, xi, yi in zip(points, x, y, strict=True):
        ax.annotate(
            _plain(str(s.get("stage", "?"))[:24]),
            (xi, yi),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=9,
        )
    _style(ax, "latency p50 (ms)", metric_name)
    ax.margins(0.15)
    caption = "<p>Each point is a stage of bigmodel compress; its area is proportional to the model size.</p>"
    return Section("compression", title, _img(fig, "compression trade-off") + caption + table)


def _short(value: Any) -> str:
    return f"{value:,.2f}" if is_number(value) and isinstance(value, float) else fmt(value)


def _size(value: Any) -> str:
    if not is_number(value):
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{int(value)} B"


# --- the page ----------------------------------------------------------------------------------------

CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#e3e6ec; --bg:#f6f7f9; --accent:#2857a4; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg);
       background:var(--bg); }
header { background:#1d2a44; color:#fff; padding:18px 32px; }
header h1 { margin:0; font-size:22px; font-weight:600; }
header p { margin:4px 0 0; color:#c9d3e6; font-size:13px; }
nav { position:sticky; top:0; z-index:1; background:#fff; border-bottom:1px solid var(--line);
      padding:8px 32px; font-size:13px; }
nav a { color:var(--accent); text-decoration:none; margin-right:16px; }
main { max-width:1120px; margin:0 auto; padding:8px 24px 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:14px 22px 18px;
          margin:18px 0; }
h2 { font-size:18px; margin:0 0 10px; }
h3 { font-size:14px; margin:14px 0 4px; color:var(--muted); }
dl { display:grid; grid-template-columns:max-content 1fr; gap:4px 18px; margin:0; }
dt { color:var(--muted); }
dd { margin:0; }
code { font-size:12px; background:var(--bg); padding:1px 4px; border-radius:3px; word-break:break-all; }
table { border-collapse:collapse; font-size:13px; margin:6px 0; }
th, td { border-bottom:1px solid var(--line); padding:4px 12px; text-align:left; }
th { background:var(--bg); font-weight:600; }
table.numbers td:not(:first-child), table.numbers th:not(:first-child) { text-align:right;
      font-variant-numeric:tabular-nums; }
tr.absent td { color:#aab; }
img.chart { max-width:100%; height:auto; display:block; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(320px, 1fr)); gap:10px; }
.note { color:#8a5a00; background:#fff7e0; border-left:3px solid #e0a800; padding:6px 10px; margin:8px 0;
        font-size:13px; }
.pill { padding:1px 8px; border-radius:10px; font-size:12px; }
.pill.ok { background:#e3f4e6; color:#1e6b2e; } .pill.warn { background:#fff1d6; color:#8a5a00; }
.examples { display:grid; grid-template-columns:repeat(auto-fill, minmax(170px, 1fr)); gap:10px; }
.example { margin:0; border:1px solid var(--line); border-radius:6px; padding:8px; font-size:12px;
           border-top:4px solid #bbb; }
.example.wrong { border-top-color:#d62728; } .example.right { border-top-color:#2ca02c; }
.example .input { min-height:40px; display:flex; justify-content:center; align-items:center; }
.example img { image-rendering:pixelated; max-width:100%; height:auto; }
.example pre { white-space:pre-wrap; word-break:break-word; font:12px/1.4 ui-monospace, monospace; margin:0;
               max-height:12em; overflow:auto; width:100%; }
.badge { font-weight:600; display:block; margin:6px 0 2px; }
.wrong .badge { color:#b21f20; } .right .badge { color:#1e6b2e; }
.info { color:var(--muted); font-size:13px; margin:6px 0; }
.example.wrong { background:#fff8f8; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:16px; }
"""


def _page(run: RunFiles, sections: list[Section]) -> str:
    title = f"{run.name} — bigmodel report"
    subtitle = " · ".join(esc(x) for x in (run.task_name, run.family, run.path.name) if x)
    nav = "".join(f'<a href="#{s.id}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    made = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(run.name)}</h1><p>{subtitle}</p></header><nav>{nav}</nav>"
        f"<main>{body}</main><footer>Written by bigmodel on {made}.</footer></body></html>\n"
    )


__all__ = ["REPORT", "downsample", "write_report"]
