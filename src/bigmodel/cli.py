"""``bigmodel <verb>``: one sub-command per stage, calling the same functions as the Python API.

Heavy imports (torch) happen inside the commands, so ``bigmodel --help`` answers at once. Any
:class:`~bigmodel.errors.UserError` becomes one paragraph on stderr and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from bigmodel.errors import UserError, did_you_mean

app = typer.Typer(
    name="bigmodel",
    help="Declare a model in a recipe; train, evaluate and predict with it.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
SET_HELP = (
    "NAME=VALUE: a task option that changes only what predict returns (repeatable), e.g. draw=true, "
    "temperature=0, top_k=3, decode=beam; the task's error lists those it has."
)

OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Parent folder for run directories.")]


@app.command()
def train(
    recipe: Annotated[Optional[str], typer.Argument(help="Recipe YAML file or shipped recipe name.")] = None,  # noqa: UP045
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.sub=value overrides.")] = None,  # noqa: UP045
    output: OutputOpt = Path("runs"),
    resume: Annotated[Optional[Path], typer.Option(help="Continue this interrupted run exactly.")] = None,  # noqa: UP045
    nproc: Annotated[
        int, typer.Option(min=1, help="Train in N processes on this machine (torchrun; one per GPU).")
    ] = 1,
    max_restarts: Annotated[
        int, typer.Option(min=0, help="With --nproc: restart a failed group this often; it resumes.")
    ] = 0,
):
    """Train a recipe; the run directory is printed at the end."""
    from bigmodel.recipe import parse_overrides

    if resume is None and recipe is None:
        raise UserError(
            "train: give a RECIPE (file or shipped name, see 'bigmodel recipes') or --resume RUN."
        )
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # launch N copies of this command via torchrun
        from bigmodel.training.dist import launch

        argv = [a for a in _train_argv() if a]
        raise typer.Exit(launch(nproc, ["train", *argv], max_restarts))
    from bigmodel.pipeline import train as run_training

    if resume is not None and recipe is not None:
        overrides = [recipe, *(overrides or [])]  # with --resume every argument is an override
        recipe = None
    run = run_training(recipe, output=output, resume=resume, **parse_overrides(overrides or []))
    if int(os.environ.get("RANK", "0")) == 0:  # one summary for a run of many processes
        _print_summary(run, "Training finished")


def _train_argv() -> list[str]:
    """This ``bigmodel train`` command's arguments without ``--nproc``/``--max-restarts`` (and their
    values): what each process that torchrun starts is given."""
    args = sys.argv[sys.argv.index("train") + 1 :] if "train" in sys.argv else []
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("--nproc", "--max-restarts"):
            skip = True
            continue
        if arg.startswith(("--nproc=", "--max-restarts=")):
            continue
        kept.append(arg)
    return kept


@app.command()
def plan(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML file or shipped recipe name.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.sub=value overrides.")] = None,  # noqa: UP045
    nproc: Annotated[int, typer.Option(min=1, help="Processes the run would use.")] = 1,
    probe: Annotated[bool, typer.Option(help="Measure a few real steps and the matmul peak.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
):
    """Before you spend it: parameters, FLOPs, memory, step time, and whether it fits the device."""
    from bigmodel.pipeline import plan as make_plan
    from bigmodel.recipe import parse_overrides
    from bigmodel.training.plan import format_plan

    result = make_plan(recipe, nproc=nproc, probe=probe, **parse_overrides(overrides or []))
    print(json.dumps(result, indent=2) if as_json else format_plan(result))


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run directory.")],
    split: Annotated[str, typer.Option(help="train, validation or test.")] = "test",
    data: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Another source with the recipe's columns (builtin:NAME, audio:FOLDER, csv:FILE...): "
            "its own split if it has splits, else all of it."
        ),
    ] = None,
):
    """Evaluate a trained run on one split of its data, or on another source; writes it into the run's
    eval.json."""
    from bigmodel.pipeline import evaluate as run_evaluation

    metrics = run_evaluation(run, split, data=data)
    table = Table(title=f"{run} — {split if data is None else data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
    console.print(table)
    rows = metrics.get("per_class") or []
    if rows:  # whatever columns the task reports per class (precision/recall/F1, IoU, ...)
        columns = [k for k in rows[0] if k != "absent"]
        per_class = Table(title="per class")
        for col in columns:
            per_class.add_column(col, justify="right")
        for row in rows:
            cells = (f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k]) for k in columns)
            per_class.add_row(*cells)
        console.print(per_class)
    console.print(f"written to {run / 'eval.json'}")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="A run directory.")],
    inputs: Annotated[
        list[Path], typer.Argument(help="A .csv/.jsonl/.parquet file of rows, or one or more image files.")
    ],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write JSON lines here.")] = None,  # noqa: UP045
    images: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--images",
            help="Folder for the images and audio a prediction holds (masks, drawn boxes, samples, speech).",
        ),
    ] = None,
    options: Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)] = None,  # noqa: UP045
):
    """Predict every row of a file (or every image given, or texts for text-to-speech); prints one JSON
    object per example. Images a prediction holds are written as PNG files, speech as WAV files (default
    folder: ./predictions), and named in the JSON."""
    from bigmodel.pipeline import load
    from bigmodel.recipe import parse_overrides

    predictor = load(run, options=parse_overrides(options or []))
    predictions = predictor.predict(inputs[0] if len(inputs) == 1 else inputs)
    predictions = _save_images(predictions, images or Path("predictions"))
    try:  # strict JSON: the predictor refuses non-finite outputs; this is the last line of defence
        lines = "".join(json.dumps(row, allow_nan=False) + "\n" for row in predictions)
    except ValueError as exc:
        raise UserError(f"{run}: a prediction is not valid JSON ({exc}); nothing was written.") from None
    if output is None:
        sys.stdout.write(lines)
    else:
        output.write_text(lines, encoding="utf-8")
        console.print(f"{lines.count(chr(10))} predictions written to {output}")


def _save_images(predictions: list[dict], folder: Path) -> list[dict]:
    """Replace every PIL image in the predictions by the path of the PNG it is saved as, and every
    :class:`~bigmodel.data.audio.Waveform` (text-to-speech) by the path of its WAV file."""
    from PIL import Image

    from bigmodel.data.audio import Waveform

    written = {"images": 0, "audio files": 0}

    def save(value, name: str):
        if isinstance(value, (Image.Image, Waveform)):
            folder.mkdir(parents=True, exist_ok=True)
            if isinstance(value, Waveform):
                path = folder / f"{name}.wav"
                path.write_bytes(value.wav_bytes())
                written["audio files"] += 1
            else:
                path = folder / f"{name}.png"
                value.save(path)
                written["images"] += 1
            return str(path)
        if isinstance(value, dict):
            return {k: save(v, f"{name}-{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [save(v, f"{name}-{i}") for i, v in enumerate(value)]
        return value

    saved = [save(row, f"{i + 1}") for i, row in enumerate(predictions)]
    for what, count in written.items():
        if count:  # on stderr: stdout carries the JSON lines
            Console(stderr=True).print(f"{count} {what} written to {folder}/", highlight=False)
    return saved


EXPORT_FORMATS = ("onnx", "torch-export", "hf")  # as pipeline.EXPORT_FORMATS


@app.command("export")
def export_run(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    format: Annotated[
        str, typer.Option("--format", "-f", help="onnx, torch-export or hf (a folder transformers loads).")
    ] = "onnx",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Default: RUN/export/FMT.")] = None,  # noqa: UP045
):
    """Export a run as a folder that runs without the training code: ONNX graphs (decoders with their
    KV cache), a torch.export program, or a Hugging Face folder; with model.json, task.json, the
    tokenizer and export.json (inputs, outputs, dynamic axes, measured difference from PyTorch)."""
    if format not in EXPORT_FORMATS:  # refused before torch loads; pipeline.export_run says the same
        raise UserError(
            f"--format: unknown export format {format!r}. Allowed: {', '.join(EXPORT_FORMATS)}."
            f"{did_you_mean(format, EXPORT_FORMATS)}"
        )
    from bigmodel.pipeline import export_run as run_export

    print(run_export(run, format, output))


@app.command()
def compress(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    stages: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="A YAML file with a compress: list (default: the run's recipe's own)."),
    ] = None,
):
    """Compress a trained run (distill, prune, quantize, in order) and measure every stage side by side:
    metric, size, parameters, latency, throughput; a stage is kept only if its accept_if holds."""
    import yaml

    from bigmodel.pipeline import compress_run as run_compression

    listed = None
    if stages is not None:
        try:
            found = yaml.safe_load(stages.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"--stages {stages}: cannot read it as YAML ({exc}).") from None
        listed = found.get("compress") if isinstance(found, dict) else found
        if not isinstance(listed, list):
            raise UserError(
                f"--stages {stages}: expected a list of stages, or a mapping with a compress: list."
            )
    rows = run_compression(run, listed)
    table = Table(title=f"{run} — compression ({rows[0]['metric_name']} on held-out data)")
    for column in ("stage", "metric", "size", "params", "p50 ms (b=1)", "items/s (b=32)", "speedup", "kept"):
        table.add_column(column, justify="left" if column in ("stage", "kept") else "right")
    for row in rows:
        speedup = f"{row['speedup']:.2f}x" if "speedup" in row else "1.00x"
        table.add_row(
            row["stage"], f"{row['metric']:.4f}", f"{row['size_bytes'] / 2**20:.2f} MiB",
            f"{row['params']:,}", f"{row['latency_ms_p50']:.2f}", f"{row['throughput']:.0f}", speedup,
            row["why"],
        )  # fmt: skip
    console.print(table)
    console.print(f"written to {run / 'compress'}/ and {run / 'report.html'}")


@app.command()
def serve(
    run: Annotated[
        str,
        typer.Argument(
            help="A run directory, an export folder (bigmodel export, onnx or torch-export: served without "
            "the model's code) or a pretrained image classifier's name."
        ),
    ],
    host: Annotated[str, typer.Option(help="Address to listen on; loopback unless told.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Examples per forward pass at most (1: no batching).")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="How long a batch waits for more requests.")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Requests waiting at most; beyond: 503.")] = 256,
    timeout_s: Annotated[float, typer.Option(help="Seconds a request may wait; beyond: 504.")] = 30.0,
    max_body_mb: Annotated[float, typer.Option(help="Request body size at most (MiB); beyond: 413.")] = 10.0,
    api_key_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="A file of API keys, one per line (or set BIGMODEL_API_KEYS=key1,key2)."),
    ] = None,
    options: Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)] = None,  # noqa: UP045
):
    """Serve a trained run over HTTP: POST /v1/predict (micro-batched), /v1/generate (streamed), GET
    /v1/model, /healthz, /readyz, /metrics, and a web page at / to try the model."""
    from bigmodel.export.runtime import is_export_folder
    from bigmodel.pipeline import load
    from bigmodel.recipe import parse_overrides
    from bigmodel.serve import ServeSettings, build_card, load_api_keys
    from bigmodel.serve import serve as run_server

    settings = ServeSettings(
        host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
        timeout_s=timeout_s, max_body_bytes=int(max_body_mb * 2**20), api_keys=load_api_keys(api_key_file),
    )  # fmt: skip
    # an export folder: its graph in ONNX Runtime or a loaded program
    predictor = load(run, options=parse_overrides(options or []))
    if is_export_folder(run):  # no run directory behind it: a card without metrics
        card = {**build_card(None), "run": Path(run).name}
    else:
        card = build_card(Path(run) if Path(run).is_dir() else None, predictor.model)
    run_server(predictor, card, settings)


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A run directory.")],
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", help="Default: RUN/report.html."),
    ] = None,
):
    """Write a run's report.html (curves, metrics, confusion matrix, examples); it opens offline."""
    from bigmodel.pipeline import report as write_run_report

    print(write_run_report(run, output))


@app.command()
def runs(
    root: Annotated[Path, typer.Argument(help="Folder of run directories.")] = Path("runs"),
    compare: Annotated[
        Optional[tuple[Path, Path]],  # noqa: UP045
        typer.Option("--compare", help="Two run directories side by side: recipe differences, metrics."),
    ] = None,
):
    """List the runs under ROOT (oldest first), or compare two runs with --compare A B."""
    from rich.markup import escape

    from bigmodel.evaluation.runs import compare_runs, list_runs

    if compare is not None:
        a, b = compare
        table = Table(title="compare runs")
        table.add_column("")
        table.add_column(escape(f"A: {a}"), justify="right", overflow="fold")
        table.add_column(escape(f"B: {b}"), justify="right", overflow="fold")
        for key, value_a, value_b in compare_runs(a, b):
            style = "bold" if key.startswith("recipe.") or value_a != value_b else ""
            table.add_row(escape(key), _cell(value_a), _cell(value_b), style=style)
        console.print(table)
        return
    listed = list_runs(root)
    if not listed:
        console.print(f"no runs under {root}")
        return
    table = Table(title=escape(f"runs under {root}"))
    for column in ("started", "recipe", "task", "model", "metrics", "params", "time", "run directory"):
        table.add_column(column, overflow="fold")
    for row in listed:
        metrics = ", ".join(f"{escape(k)} {v:.4f}" for k, v in row["key_metrics"].items())
        if row["split"]:
            metrics = f"{row['split']}: {metrics}"
        status = "" if row["finished"] else " [yellow](unfinished)[/]"
        time_s = f"{row['time_s']:.1f} s" if isinstance(row["time_s"], (int, float)) else "—"
        table.add_row(row["date"], escape(row["name"]) + status, _cell(row["task"]), _cell(row["family"]),
                      metrics or "—", _cell(row["params"]), time_s, escape(row["path"]))  # fmt: skip
    console.print(table)


def _cell(value) -> str:
    from rich.markup import escape

    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return escape(str(value))


@app.command()
def recipes():
    """List the shipped recipes."""
    import yaml

    from bigmodel.recipe import shipped_recipes

    for name, path in shipped_recipes().items():
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        print(f"{name:<20} {data.get('description', '')}")


data_app = typer.Typer(help="The built-in data sets (builtin:NAME): what they are, where from, licence.")
app.add_typer(data_app, name="data")


@data_app.command("list")
def data_list():
    """List the built-in data sets and whether their package is installed."""
    from bigmodel.data.builtin import BUILTINS

    for name, entry in BUILTINS.items():
        print(f"{name:<20} {'installed' if entry.ready() else 'missing: ' + entry.install}")


@data_app.command("info")
def data_info(name: Annotated[str, typer.Argument(help="A built-in data set, e.g. wnut16-ner.")]):
    """Say what a built-in data set is: source, size, licence, and how to install it."""
    from bigmodel.data.builtin import BUILTINS
    from bigmodel.errors import unknown_name

    if name not in BUILTINS:
        raise unknown_name("data info NAME", name, BUILTINS, error=UserError)
    entry = BUILTINS[name]
    print(f"builtin:{name}\n{entry.about}")
    print(f"package: {entry.package or 'scikit-learn (always installed)'}")
    if entry.install:
        print(f"install: {entry.install}")


@data_app.command("export")
def data_export(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML file or shipped recipe name.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.sub=value overrides.")] = None,  # noqa: UP045
    output: Annotated[Path, typer.Option("--output", "-o", help="The JSON lines file to write.")] = Path(
        "data.jsonl"
    ),
    split: Annotated[str, typer.Option(help="train, validation or test.")] = "train",
    column: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="A column to write (repeatable; default: all)."),
    ] = None,
):
    """Write one split of a recipe's data as JSON lines, as training sees it: e.g. the train split's
    text for masked-LM pretraining with no test example in it (read back with jsonl:FILE)."""
    from bigmodel.pipeline import export_data
    from bigmodel.recipe import parse_overrides

    rows = export_data(recipe, output, split=split, columns=column, **parse_overrides(overrides or []))
    print(f"{rows} rows of the {split} split -> {output}")


@app.command()
def demo(output: OutputOpt = Path("runs")):
    """Train the digits CNN (recipes/digits-cnn.yaml) and print what it reached."""
    from bigmodel.pipeline import train as run_training

    run = run_training("digits-cnn", output=output)
    _print_summary(run, "bigmodel demo: a CNN on handwritten digits")


def _print_summary(run, title: str) -> None:
    test = run.metrics.get("test") or run.metrics.get("validation") or {}
    table = Table(title=title)
    table.add_column("")
    table.add_column("", justify="right")
    for key in (
        "accuracy",
        "f1",
        "f1_macro",
        "exact_match",
        "cer",
        "wer",
        "perplexity",
        "bpc",
        "r2",
        "rmse",
        "mae",
    ):
        if key in test:
            table.add_row(f"test {key}", f"{test[key]:.4f}")
    t = run.metrics["train"]
    table.add_row("parameters", f"{t['params']:,}")
    table.add_row("training time", f"{t['time_s']:.1f} s ({t['steps']} steps, {t['epochs']} epochs)")
    console.print(table)
    print(f"run directory: {run.path}")  # plain print: never truncated, easy to copy


def main() -> None:
    """Entry point. Usage errors exit 2 (click); user errors exit 2 with one paragraph, no traceback."""
    try:
        app()
    except UserError as exc:
        from rich.markup import escape  # messages hold brackets: compress[0], [MASK], 'bigmodel[serve]'

        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
