"""Strict conversion between native state dicts and published layouts, through a family's key map.

Every native key must be produced, every published key consumed (except those the format marks
optional), every shape must match; the first problem is reported by name.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from bigmodel.errors import UserError
from bigmodel.models.registry import CheckpointFormat


class CheckpointMismatch(UserError):
    """A published checkpoint does not fit the native model (missing/unused key, wrong shape)."""


def from_published(
    fmt: CheckpointFormat, config, published: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map a published state dict onto native keys.

    Args:
        fmt: the family's checkpoint format.
        config: the native config the model was built with.
        published: the published tensors (e.g. from ``model.safetensors``).
        expected: the native model's ``state_dict()``, for key coverage and shapes.
    """
    key_map, transposed, optional = fmt.key_map(config), fmt.transposed(config), fmt.optional(config)
    missing_native = [k for k in expected if k not in key_map]
    if missing_native:
        raise CheckpointMismatch(f"key map has no entry for native tensor '{missing_native[0]}'")
    native, used = {}, set()
    for key, ref in expected.items():
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
    unused = [k for k in published if k not in used and k not in optional]
    if unused:
        raise CheckpointMismatch(f"checkpoint tensor '{unused[0]}' is not used by the native model")
    return native


def to_published(
    fmt: CheckpointFormat, config, native: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map a native state dict to the published layout (the inverse of :func:`from_published`).

    Native tensors that share storage (tied embeddings) are written once per published key; keys the
    format marks optional are not written.
    """
    key_map, transposed, optional = fmt.key_map(config), fmt.transposed(config), fmt.optional(config)
    out = {}
    for key, tensor in native.items():
        if key not in key_map:
            raise CheckpointMismatch(f"key map has no entry for native tensor '{key}'")
        dst = key_map[key]
        if dst in optional:
            continue
        out[dst] = (tensor.t() if key in transposed else tensor).contiguous().clone()
    return out
