"""Without the serve extra, asking for the HTTP side is a clear UserError naming the install command."""

import importlib
import sys

import pytest

from bigmodel.errors import UserError


def test_missing_web_stack_names_the_extra(monkeypatch):
    import bigmodel.serve

    monkeypatch.delitem(sys.modules, "bigmodel.serve.app", raising=False)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"needs the 'fastapi' package.*bigmodel\[serve\]"):
        bigmodel.serve.create_app  # noqa: B018
    monkeypatch.undo()
    importlib.import_module("bigmodel.serve.app")  # and it imports again once the package is there
