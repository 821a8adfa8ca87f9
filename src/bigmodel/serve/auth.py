"""Optional API keys: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.

Keys come from ``BIGMODEL_API_KEYS`` (comma-separated) or a file with one key per line (blank lines
and ``#`` comments skipped). A presented key is compared with every configured key by
:func:`hmac.compare_digest` — constant time, and no early exit on the first match — so the response
time says nothing about how much of a key was right. Without keys the server is open: bind it to
loopback (the default) or give it keys.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from fastapi import HTTPException, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from bigmodel.errors import UserError

ENV_KEYS = "BIGMODEL_API_KEYS"
_KEY_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")


def load_api_keys(file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The configured keys: those in ``file`` (one per line) and in ``$BIGMODEL_API_KEYS`` (commas).

    Raises:
        UserError: the file cannot be read, holds no key, or a key has characters a header cannot
            carry (named by line).
    """
    environ = os.environ if environ is None else environ
    keys: list[str] = []
    for i, key in enumerate(environ.get(ENV_KEYS, "").split(",")):
        if key.strip():
            keys.append(_checked(key.strip(), f"${ENV_KEYS}: key {i + 1}"))
    if file is not None:
        path = Path(file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read the API key file ({exc}).") from None
        found = [
            (n, line.strip()) for n, line in enumerate(lines, 1) if line.strip() and not line.startswith("#")
        ]
        if not found:
            raise UserError(
                f"{path}: the API key file holds no key (one key per line; '#' starts a comment)."
            )
        keys += [_checked(key, f"{path}: line {n}") for n, key in found]
    return frozenset(keys)


def _checked(key: str, where: str) -> str:
    bad = sorted(set(key) - _KEY_CHARS)
    if bad:
        raise UserError(
            f"{where}: an API key may hold letters, digits and - . _ ~ + / = only; found {''.join(bad)!r}."
        )
    if len(key) < 16:
        raise UserError(
            f"{where}: an API key needs at least 16 characters (got {len(key)}); use a random one, "
            "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`."
        )
    return key


def key_matches(presented: str | None, keys: Iterable[str]) -> bool:
    """Whether ``presented`` equals one of ``keys``, compared in constant time against every key."""
    if not presented:
        return False
    given = presented.encode("latin-1", errors="replace")  # headers arrive as latin-1 text
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode("ascii"))
    return matched


_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")


def api_key_dependency(keys: frozenset[str]):
    """A FastAPI dependency refusing requests without one of ``keys`` (401, ``WWW-Authenticate:
    Bearer``). It also declares both schemes in the OpenAPI document."""

    async def require_api_key(
        bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
        header: str | None = Security(_header),
    ) -> None:
        presented = [bearer.credentials if bearer is not None else None, header]
        if not any(key_matches(p, keys) for p in presented):
            reason = "wrong API key" if any(presented) else "an API key is required"
            raise HTTPException(
                401,
                f"{reason}: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'.",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_api_key
