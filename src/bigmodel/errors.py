"""User-facing errors.

Every mistake a user can make (bad recipe, missing file, wrong shape, not a run directory) raises a
subclass of :class:`UserError` carrying one readable paragraph. The CLI prints it and exits with
code 2; the server answers 4xx. Anything else is a bug and keeps its traceback.

This module imports nothing heavy: the recipe layer and the CLI use it before torch is loaded.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in what the user asked for, explained in one paragraph."""


class RecipeError(UserError):
    """The recipe (or an override) names an unknown key, a wrong type or a value out of range."""


class DataError(UserError):
    """A data file is missing or malformed, or a declared column is absent."""


class RunDirError(UserError):
    """A path given as a run directory is not one (or lacks what the stage needs)."""


def did_you_mean(value: object, allowed: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest allowed name, or '' when nothing is close."""
    matches = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" Did you mean '{matches[0]}'?" if matches else ""


def unknown_name(field: str, value: object, allowed: Iterable[str], error=RecipeError) -> UserError:
    """Build the standard 'unknown name' error: field, value, the allowed names, a did-you-mean."""
    allowed = sorted(allowed)
    return error(
        f"{field}: unknown value {value!r}. Allowed: {', '.join(allowed)}.{did_you_mean(value, allowed)}"
    )
