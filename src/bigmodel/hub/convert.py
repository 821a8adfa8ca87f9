"""Strict conversion between native state dicts and published layouts, through a family's key map.

Every native key must be produced, every published key consumed (except those the format marks
optional), every shape must match; the first problem is reported by name.

A published tensor maps to one native tensor (``key_map``, possibly ``transposed``) or to several
(``fused``: GPT-2's ``c_attn`` is q, k and v concatenated); fused tensors are split on load by the
native shapes and concatenated again on save.

An optional entry ending in ``.*`` covers every published key under that prefix: an encoder-only
model reads a full encoder–decoder checkpoint and leaves ``decoder.*`` unread.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from bigmodel.errors import UserError
from bigmodel.models.registry import CheckpointFormat


class CheckpointMismatch(UserError):
    """A published checkpoint does not fit the native model (missing/unused key, wrong shape)."""


def is_optional(key: str, optional: set[str]) -> bool:
    """Whether the published ``key`` is optional: named exactly, or under an ``optional`` ``prefix.*``."""
    return key in optional or any(p.endswith(".*") and key.startswith(p[:-1]) for p in optional)


def _fused_index(fmt: CheckpointFormat, config, key_map: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """Native key -> (published key, position among its parts) for every fused part."""
    index = {}
    for dst, (parts, _) in fmt.fused(config).items():
        for i, key in enumerate(parts):
            if key in key_map or key in index:
                raise ValueError(f"native tensor '{key}' is mapped twice by the checkpoint format")
            index[key] = (dst, i)
    return index


def _parts_transposed(parts: list[str], transposed: set[str], dst: str) -> bool:
    flags = {key in transposed for key in parts}
    if len(flags) > 1:
        raise ValueError(f"parts of fused '{dst}' must be all transposed or none: {parts}")
    return flags.pop()


def _split_fused(
    dst: str,
    parts: list[str],
    dim: int,
    tensor: torch.Tensor,
    transposed: bool,
    expected: Mapping[str, torch.Tensor],
) -> list[torch.Tensor]:
    """Split one published tensor into its native parts, checking the shape against all of them."""
    missing = [k for k in parts if k not in expected]
    if missing:
        raise CheckpointMismatch(f"fused '{dst}' names '{missing[0]}', which the native model lacks")
    if transposed:
        tensor = tensor.t()
    shapes = [tuple(expected[k].shape) for k in parts]
    dim %= len(shapes[0])
    want = list(shapes[0])
    want[dim] = sum(s[dim] for s in shapes)
    if tuple(tensor.shape) != tuple(want) or any(
        s[:dim] + s[dim + 1 :] != shapes[0][:dim] + shapes[0][dim + 1 :] for s in shapes
    ):
        raise CheckpointMismatch(
            f"shape mismatch for '{dst}' -> {parts}: checkpoint {tuple(tensor.shape)}, "
            f"model {shapes} concatenated on dim {dim}"
        )
    return list(tensor.split([s[dim] for s in shapes], dim=dim))


def from_published(
    fmt: CheckpointFormat, config, published: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map a published state dict onto native keys.

    Args:
        fmt: the family's checkpoint format.
        config: the native config the model was built with.
        published: the published tensors (e.g. from ``model.safetensors``).
        expected: the native model's ``state_dict()``, for key coverage and shapes.

    Raises:
        CheckpointMismatch: naming the first native tensor without a source, published tensor
            missing, shape that differs, or published tensor left unused.
    """
    key_map, transposed, optional = fmt.key_map(config), fmt.transposed(config), fmt.optional(config)
    fused = fmt.fused(config)
    fused_index = _fused_index(fmt, config, key_map)
    missing_native = [k for k in expected if k not in key_map and k not in fused_index]
    if missing_native:
        raise CheckpointMismatch(f"key map has no entry for native tensor '{missing_native[0]}'")
    native, used, split = {}, set(), {}
    for key, ref in expected.items():
        if key in fused_index:
            src, i = fused_index[key]
            if src not in published:
                raise CheckpointMismatch(f"checkpoint lacks '{src}' (needed for native '{key}')")
            if src not in split:
                parts, dim = fused[src]
                t = _parts_transposed(parts, transposed, src)
                split[src] = _split_fused(src, parts, dim, published[src], t, expected)
            tensor = split[src][i]
        else:
            src = key_map[key]
            if src not in published:
                raise CheckpointMismatch(f"checkpoint lacks '{src}' (needed for native '{key}')")
            tensor = published[src]
            if key in transposed:
                tensor = tensor.t()
            if tuple(tensor.shape) != tuple(ref.shape):
                raise CheckpointMismatch(
                    f"shape mismatch for '{src}' -> '{key}': checkpoint {tuple(tensor.shape)}, "
                    f"model {tuple(ref.shape)}"
                )
        native[key] = tensor.to(ref.dtype).contiguous()
        used.add(src)
    unused = [k for k in published if k not in used and not is_optional(k, optional)]
    if unused:
        raise CheckpointMismatch(f"checkpoint tensor '{unused[0]}' is not used by the native model")
    return native


def to_published(
    fmt: CheckpointFormat, config, native: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map a native state dict to the published layout (the inverse of :func:`from_published`).

    Native tensors that share storage (tied embeddings) are written once per published key; keys the
    format marks optional are not written. Fused parts are concatenated (then transposed if they are
    ``transposed``) into their one published tensor, placed where the first part appears.
    """
    key_map, transposed, optional = fmt.key_map(config), fmt.transposed(config), fmt.optional(config)
    fused = fmt.fused(config)
    fused_index = _fused_index(fmt, config, key_map)
    out = {}
    for key, tensor in native.items():
        if key in fused_index:
            dst, _ = fused_index[key]
            if dst in out or is_optional(dst, optional):
                continue
            parts, dim = fused[dst]
            missing = [k for k in parts if k not in native]
            if missing:
                raise CheckpointMismatch(f"fused '{dst}' needs native tensor '{missing[0]}', which is absent")
            cat = torch.cat([native[k] for k in parts], dim=dim)
            out[dst] = (cat.t() if _parts_transposed(parts, transposed, dst) else cat).contiguous()
            continue
        if key not in key_map:
            raise CheckpointMismatch(f"key map has no entry for native tensor '{key}'")
        dst = key_map[key]
        if is_optional(dst, optional):
            continue
        out[dst] = (tensor.t() if key in transposed else tensor).contiguous().clone()
    return out
