"""What a client and its engines must agree on: the pxgrpc protocol, the Python minor version
and the cloudpickle version (a function pickled under one may not load under another).

Engines register theirs; clients compare each engine's with their own when they connect and
warn in one line naming both (`mismatch`). ``PXGRPC_FAKE_VERSIONS`` (for tests only, read by
engines) replaces some of an engine's, e.g. ``cloudpickle=0.0.1,python=3.6.0,protocol=0``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger(__name__)

#: The version of the pxgrpc wire protocol (the `pxgrpc.v1` package of the protos, and its
#: conventions). A change that older peers cannot follow bumps it.
PROTOCOL_VERSION = "1"
FAKE_VERSIONS_VARIABLE = "PXGRPC_FAKE_VERSIONS"


class VersionMismatchWarning(UserWarning):
    """An engine runs a pxgrpc protocol, Python minor version or cloudpickle other than the
    client's: code and objects pickled on one side may fail to load on the other."""


@dataclass(frozen=True)
class Versions:
    """The versions a peer must agree on."""

    protocol: str
    python: str
    cloudpickle: str


def local() -> Versions:
    """This process's versions."""
    try:
        import cloudpickle

        pickler = str(getattr(cloudpickle, "__version__", ""))
    except ImportError:
        pickler = ""
    return Versions(PROTOCOL_VERSION, ".".join(map(str, sys.version_info[:3])), pickler)


def engine_versions() -> Versions:
    """What an engine registers: `local()`, with ``PXGRPC_FAKE_VERSIONS`` applied (tests)."""
    versions = local()
    fake = os.environ.get(FAKE_VERSIONS_VARIABLE, "")
    for item in filter(None, (part.strip() for part in fake.split(","))):
        name, _, value = item.partition("=")
        if name in ("protocol", "python", "cloudpickle"):
            versions = replace(versions, **{name: value})
    return versions


def _minor(python: str) -> str:
    return ".".join(python.split(".")[:2])


def mismatch(engine: Versions, mine: Versions) -> str:
    """What differs between an engine's versions and this client's, in words ("" if nothing).

    >>> mismatch(Versions("1", "3.9.1", "3.0.0"), Versions("1", "3.11.4", "3.0.0"))
    'Python 3.9.1 (this client: 3.11.4)'
    """
    differences = []
    if engine.protocol and engine.protocol != mine.protocol:
        differences.append(f"pxgrpc protocol {engine.protocol} (this client: {mine.protocol})")
    if engine.python and _minor(engine.python) != _minor(mine.python):
        differences.append(f"Python {engine.python} (this client: {mine.python})")
    if engine.cloudpickle and engine.cloudpickle != mine.cloudpickle:
        differences.append(f"cloudpickle {engine.cloudpickle} (this client: {mine.cloudpickle or 'none'})")
    return ", ".join(differences)


class EngineVersionCheck:
    """A client's check of the engines it learns of: one warning (logged, and as a
    `VersionMismatchWarning`) per engine process whose versions differ from this client's."""

    def __init__(self) -> None:
        self.mine = local()
        self._checked: set[tuple[int, int]] = set()

    def check(self, engines: Iterable[Any]) -> None:
        """`engines`: `EngineInfo` messages (id, pid, hostname and the three versions)."""
        for e in engines:
            if (e.engine_id, e.pid) in self._checked:
                continue
            self._checked.add((e.engine_id, e.pid))
            theirs = Versions(e.protocol_version, e.python_version, e.cloudpickle_version)
            differences = mismatch(theirs, self.mine)
            if differences:
                message = (
                    f"engine {e.engine_id} (pid {e.pid} on {e.hostname}) runs {differences}: "
                    "what one side pickles may fail to load on the other"
                )
                log.warning("%s", message)
                warnings.warn(message, VersionMismatchWarning, stacklevel=3)
