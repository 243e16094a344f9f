"""Tokens: make them, and carry them on every call as ``authorization: bearer <token>``.

A cluster has a client token (drives the Controller service) and an engine token (lets an
engine join). Servers check them with :class:`pxgrpc.security.interceptor.TokenAuthInterceptor`.
"""

from __future__ import annotations

import secrets

TOKEN_METADATA_KEY = "authorization"
#: The scheme of the token in the metadata: ``authorization: bearer <token>``.
TOKEN_SCHEME = "bearer"


def new_token() -> str:
    """Return a fresh random token (256 bits, URL-safe) for a client or engine.

    Never starts with '-', so that ``--token TOKEN`` on a command line is not read as an option.
    """
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``; pass it as ``metadata=`` on every RPC."""
    return ((TOKEN_METADATA_KEY, f"{TOKEN_SCHEME} {token}"),)
