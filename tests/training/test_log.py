"""Progress: plain periodic lines off a terminal, and every logged point in metrics.jsonl."""

import json

from bigmodel.training.log import RunLogger, trim_metrics


def test_plain_lines_when_not_a_terminal(tmp_path, capsys):
    logger = RunLogger(tmp_path / "metrics.jsonl", total_steps=3, interactive=False)
    logger.step(1, 0, 2.5, 1e-3, 100.0, record=True)
    logger.step(2, 0, 2.0, 1e-3, 100.0, record=False)  # within the plain-line interval: silent
    logger.step(3, 1, 1.5, 1e-3, 100.0, record=True)  # last step: always shown
    logger.evaluation(3, 1, "validation", {"loss": 1.4, "accuracy": 0.5})
    logger.close()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("step 1/3") and "loss 2.5000" in out[0] and "samples/s" in out[0]
    assert out[1].startswith("step 3/3") and len(out) == 3
    assert "validation @ step 3" in out[2] and "accuracy 0.5000" in out[2]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 3, 3] and records[2]["split"] == "validation"


def test_quiet_logger_still_records(tmp_path, capsys):
    logger = RunLogger(tmp_path / "m.jsonl", total_steps=1, show=False)
    logger.step(1, 0, 1.0, 0.1, 1.0, record=True)
    logger.close()
    assert capsys.readouterr().out == ""
    assert json.loads((tmp_path / "m.jsonl").read_text())["loss"] == 1.0


def test_trim_drops_lines_after_the_checkpoint_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste')
    trim_metrics(path, 2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]
