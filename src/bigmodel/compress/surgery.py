"""Module surgery: swap submodules of a built model from outside, never by editing ``models/``.

Compression and adaptation (LoRA, quantisation, pruning) all come down to "replace every module that
matches with one built from it": :func:`replace_modules` does that once, for everyone.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_modules(
    model: nn.Module,
    predicate: Callable[[str, nn.Module], bool],
    factory: Callable[[str, nn.Module], nn.Module],
) -> list[str]:
    """Replace every submodule for which ``predicate(path, module)`` holds by ``factory(path, module)``.

    The matches are collected first, then swapped, so a replacement is never visited itself (a wrapper
    that holds the old module cannot be wrapped twice by one call). A module reachable under several
    paths (shared) is replaced at each of them by one replacement, so sharing survives. The root is
    never replaced.

    Args:
        model: the module to edit in place.
        predicate: ``(dotted path, module) -> bool``; paths as ``model.named_modules()`` names them.
        factory: ``(dotted path, module) -> new module``.

    Returns:
        The paths replaced, in ``named_modules`` order.
    """
    found = [
        (path, module)
        for path, module in model.named_modules(remove_duplicate=False)
        if path and predicate(path, module)
    ]
    made: dict[int, nn.Module] = {}
    for path, module in found:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        if id(module) not in made:
            made[id(module)] = factory(path, module)
        setattr(parent, name, made[id(module)])
    return [path for path, _ in found]
