"""The error every security check raises: its message names the cause and how to fix it."""

from __future__ import annotations


class SecurityError(Exception):
    """A security check failed; the message names the cause and how to fix it."""
