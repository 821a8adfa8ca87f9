"""Progress for people, metrics for files.

On a terminal: a rich progress bar with loss and samples/s. Elsewhere (CI, pipes): a plain line at
most every few seconds and at every evaluation. Every logged point also goes to ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class RunLogger:
    """Writes ``metrics.jsonl`` and shows progress.

    Args:
        path: the metrics.jsonl file (appended to).
        total_steps: optimizer steps planned, for the bar.
        show: print progress at all (``False`` for quiet library use).
        interactive: a rich bar (default: when stdout is a terminal) or plain lines.
    """

    PLAIN_EVERY_S = 5.0

    def __init__(
        self, path: Path | None, total_steps: int, show: bool = True, interactive: bool | None = None
    ):
        # path None: another process (rank 0) writes the file; this one only counts
        self.file = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115 (closed in close())
        self.show = show
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.total_steps = total_steps
        self._last_plain = 0.0
        self._progress = None
        if show and self.interactive:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "loss {task.fields[loss]}  {task.fields[speed]} samples/s  epoch {task.fields[epoch]}"
                ),
                TimeRemainingColumn(),
                console=Console(),
                transient=False,
            )
            self._bar = self._progress.add_task("train", total=total_steps, loss="-", speed="-", epoch=0)
            self._progress.start()

    def write(self, record: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def step(
        self, step: int, epoch: int, loss: float, lr: float, samples_per_s: float, record: bool,
        extra: dict[str, float] | None = None,
    ) -> None:  # fmt: skip
        """One optimizer step; ``extra``: tokens/s, TFLOP/s and MFU where known."""
        extra = extra or {}
        if record:
            self.write({"step": step, "epoch": epoch, "loss": loss, "lr": lr, "samples_per_s": samples_per_s,
                        **extra, "time": round(time.time(), 3)})  # fmt: skip
        if not self.show:
            return
        if self._progress is not None:
            self._progress.update(
                self._bar, completed=step, loss=f"{loss:.4f}", speed=f"{samples_per_s:,.0f}", epoch=epoch
            )
        elif time.monotonic() - self._last_plain >= self.PLAIN_EVERY_S or step == self.total_steps:
            self._last_plain = time.monotonic()
            rates = f"  {extra['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in extra else ""
            rates += f"  MFU {extra['mfu']:.1%}" if "mfu" in extra else ""
            print(
                f"step {step}/{self.total_steps}  epoch {epoch}  loss {loss:.4f}  lr {lr:.3g}  "
                f"{samples_per_s:,.0f} samples/s{rates}",
                flush=True,
            )

    def evaluation(self, step: int, epoch: int, split: str, metrics: dict[str, float]) -> None:
        self.write({"step": step, "epoch": epoch, "split": split, **metrics})
        if self.show:
            text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            line = f"{split} @ step {step} (epoch {epoch}): {text}"
            if self._progress is not None:
                self._progress.console.print(line)
            else:
                print(line, flush=True)

    def message(self, text: str) -> None:
        if self.show:
            (self._progress.console.print if self._progress else print)(text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self.file is not None:
            self.file.close()


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after ``last_step`` (a crashed run got further than its checkpoint)."""
    if not path.is_file():
        return
    from bigmodel.hub.files import write_text

    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:  # a line torn by the crash
            continue
    write_text(path, "".join(line + "\n" for line in kept))
