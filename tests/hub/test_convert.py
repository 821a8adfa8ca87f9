"""hub/convert.py: strict key-map conversion, including fused tensors (one published = several native)."""

from __future__ import annotations

import pytest
import torch

from bigmodel.hub.convert import CheckpointMismatch, from_published, to_published
from bigmodel.models.registry import CheckpointFormat


def native_state() -> dict[str, torch.Tensor]:
    """Uneven parts (v is wider than q and k) so a wrong split size shows."""
    g = torch.Generator().manual_seed(0)
    shapes = {
        "attn.q.weight": (2, 3), "attn.k.weight": (2, 3), "attn.v.weight": (4, 3),
        "attn.q.bias": (2,), "attn.k.bias": (2,), "attn.v.bias": (4,),
        "gate.a": (5, 2), "gate.b": (5, 1), "out.weight": (7, 3),
    }  # fmt: skip
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


FMT = CheckpointFormat(
    key_map=lambda c: {"out.weight": "lm.out"},
    transposed=lambda c: {"attn.q.weight", "attn.k.weight", "attn.v.weight", "out.weight"},
    optional=lambda c: {"lm.mask_buffer"},
    fused=lambda c: {
        "lm.qkv.weight": (["attn.q.weight", "attn.k.weight", "attn.v.weight"], 0),
        "lm.qkv.bias": (["attn.q.bias", "attn.k.bias", "attn.v.bias"], 0),
        "lm.gate": (["gate.a", "gate.b"], -1),  # along the last dim, not transposed
    },
)


def test_fused_layout_and_round_trip():
    native = native_state()
    pub = to_published(FMT, None, native)
    assert set(pub) == {"lm.qkv.weight", "lm.qkv.bias", "lm.gate", "lm.out"}
    # Transposed parts: the transpose applies to the concatenation, (in, q+k+v) like GPT-2's Conv1D.
    qkv = torch.cat([native["attn.q.weight"], native["attn.k.weight"], native["attn.v.weight"]])
    assert torch.equal(pub["lm.qkv.weight"], qkv.t()) and pub["lm.qkv.weight"].shape == (3, 8)
    assert torch.equal(pub["lm.gate"], torch.cat([native["gate.a"], native["gate.b"]], dim=1))
    assert pub["lm.qkv.weight"].is_contiguous()

    back = from_published(FMT, None, {**pub, "lm.mask_buffer": torch.ones(1)}, native)
    assert list(back) == list(native)  # native order kept
    for k in native:
        assert torch.equal(back[k], native[k]), k
        assert back[k].is_contiguous()


def test_fused_shape_mismatch_names_the_published_tensor():
    native = native_state()
    pub = to_published(FMT, None, native)
    pub["lm.qkv.weight"] = torch.zeros(3, 9)
    with pytest.raises(CheckpointMismatch, match=r"lm\.qkv\.weight.*\(9, 3\)"):
        from_published(FMT, None, pub, native)


def test_fused_missing_and_unused_tensors_are_named():
    native = native_state()
    pub = to_published(FMT, None, native)
    with pytest.raises(CheckpointMismatch, match=r"lacks 'lm\.qkv\.bias'.*attn\.q\.bias"):
        from_published(FMT, None, {k: v for k, v in pub.items() if k != "lm.qkv.bias"}, native)
    with pytest.raises(CheckpointMismatch, match="'lm.extra' is not used"):
        from_published(FMT, None, {**pub, "lm.extra": torch.zeros(1)}, native)
    # A native tensor covered by neither the key map nor a fused group.
    with pytest.raises(CheckpointMismatch, match="no entry for native tensor 'stray'"):
        from_published(FMT, None, pub, {**native, "stray": torch.zeros(1)})
    # Saving a fused group with a part missing from the native state.
    with pytest.raises(CheckpointMismatch, match="'attn.v.bias'"):
        to_published(FMT, None, {k: v for k, v in native.items() if k != "attn.v.bias"})


def test_fused_format_errors():
    native = native_state()
    twice = CheckpointFormat(
        key_map=lambda c: {"out.weight": "lm.out", "gate.a": "lm.a"},
        fused=lambda c: {"lm.gate": (["gate.a", "gate.b"], 1)},
    )
    with pytest.raises(ValueError, match="'gate.a' is mapped twice"):
        from_published(twice, None, {}, native)
    mixed = CheckpointFormat(
        key_map=lambda c: {},
        transposed=lambda c: {"gate.a"},
        fused=lambda c: {"lm.gate": (["gate.a", "gate.b"], 1)},
    )
    with pytest.raises(ValueError, match="all transposed or none"):
        to_published(mixed, None, {"gate.a": native["gate.a"], "gate.b": native["gate.b"]})


def test_plain_key_map_behaviour_unchanged():
    native = {"w": torch.randn(3, 2), "b": torch.randn(3)}
    fmt = CheckpointFormat(key_map=lambda c: {"w": "W", "b": "B"}, transposed=lambda c: {"w"})
    pub = to_published(fmt, None, native)
    assert torch.equal(pub["W"], native["w"].t())
    back = from_published(fmt, None, pub, native)
    assert all(torch.equal(back[k], native[k]) for k in native)
    with pytest.raises(CheckpointMismatch, match=r"shape mismatch for 'W' -> 'w'"):
        from_published(fmt, None, {"W": torch.zeros(3, 2), "B": pub["B"]}, native)
