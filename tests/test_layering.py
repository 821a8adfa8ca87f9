"""Imports flow downstream only (DESIGN.md): each stage imports earlier stages, never later ones."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "bigmodel"
# Pipeline order. A package may import bigmodel packages at its own position or earlier.
STAGES = [
    "errors",
    "recipe",
    "data",
    "nn",
    "models",
    "hub",
    "tasks",
    "training",
    "evaluation",
    "compress",
    "export",
    "serve",
]
# evaluation/ holds leaves (NumPy/torch computations of metrics: classification reports, COCO AP, Fréchet
# distance, mel-cepstral distance): tasks own their metrics and compute them with these, so a leaf imports
# only stages that tasks/ itself may import (mel-cepstral distance needs data/'s mel filterbank).
LEAVES = {"bigmodel.evaluation.metrics", "bigmodel.evaluation.detection", "bigmodel.evaluation.generation",
          "bigmodel.evaluation.speech_quality"}  # fmt: skip
# Top-level modules that wire everything together.
WIRING = {"pipeline", "rundir", "cli", "__init__", "__main__"}
# Only hub/ may touch the big external model libraries.
HUB_ONLY = {"transformers", "torchvision", "huggingface_hub"}


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, node.lineno)]
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_flow_downstream(path):
    package = path.relative_to(SRC).parts[0].removesuffix(".py")
    for name, line in _imports(path):
        root = name.split(".")[0]
        if root in HUB_ONLY:
            assert package == "hub", f"{path.name}:{line} imports {name}; only hub/ may"
        if root != "bigmodel" or package in WIRING or any(name.startswith(leaf) for leaf in LEAVES):
            continue
        parts = name.split(".")
        target = parts[1] if len(parts) > 1 else None
        if target not in STAGES:  # e.g. "from bigmodel.data import X" resolved X; only stage names matter
            continue
        assert STAGES.index(target) <= STAGES.index(package), (
            f"{path.relative_to(SRC)}:{line} imports {name}: {package}/ may not import later stage {target}/"
        )


def test_leaves_import_only_what_tasks_may():
    before_tasks = STAGES[: STAGES.index("tasks")]
    for leaf in LEAVES:
        path = SRC.joinpath(*leaf.split(".")[1:]).with_suffix(".py")
        assert path.is_file(), f"{leaf} is listed as a leaf but does not exist"
        for name, line in _imports(path):
            parts = name.split(".")
            assert parts[0] != "bigmodel" or (len(parts) > 1 and parts[1] in before_tasks), (
                f"{path.name}:{line} imports {name}; a leaf imports only {', '.join(before_tasks)}"
            )


def test_recipe_and_cli_help_import_no_torch():
    code = "import sys, bigmodel, bigmodel.recipe, bigmodel.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_nn_imports_only_torch_and_itself():
    for path in (SRC / "nn").glob("*.py"):
        for name, line in _imports(path):
            root = name.split(".")[0]
            assert root in {
                "torch",
                "bigmodel",
                "__future__",
                "math",
                "dataclasses",
                "typing",
                "collections",
            }, f"nn/{path.name}:{line} imports {name}"
            if root == "bigmodel":
                assert name.startswith("bigmodel.nn"), f"nn/{path.name}:{line} imports {name}"
