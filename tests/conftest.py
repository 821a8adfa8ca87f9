"""Suite-wide settings: offline, and one torch thread per xdist worker (2 workers on 2 cores)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _report_only_where_asked(request, monkeypatch):
    """Training ends by drawing report.html (about a second of matplotlib per run). The suite trains
    hundreds of tiny runs, so only tests marked ``report`` draw it; the others check everything else."""
    if "report" not in request.keywords:
        monkeypatch.setattr("bigmodel.pipeline._finish_report", lambda *args, **kwargs: None)
