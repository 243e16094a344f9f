"""The committed generated code matches protos/ (run `make protos` when this fails)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lines that name the generator's version: they differ between grpcio-tools releases, not protos.
VERSION_LINE = re.compile(
    r"^(# Protobuf Python Version:.*|GRPC_GENERATED_VERSION = .*|\s*\d+,\s*$|\s*'\d+\.\d+\.\d+'.*)$"
)

pytestmark = pytest.mark.timeout(60)


def _normalized(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not VERSION_LINE.match(line)]


def test_generated_stubs_are_not_stale(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = gen
    spec.loader.exec_module(gen)
    written = gen.generate(tmp_path)
    committed = ROOT / "pxgrpc" / "_proto"
    fresh = {p.name for p in written}
    assert fresh == {p.name for p in committed.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")}
    stale = [name for name in sorted(fresh) if _normalized(tmp_path / name) != _normalized(committed / name)]
    assert not stale, f"pxgrpc/_proto is stale for {stale}: run `make protos` and commit the result"


def test_only_the_wire_layer_imports_the_generated_package() -> None:
    importers = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "pxgrpc").rglob("*.py")
        if "_proto" not in p.parts
        and re.search(r"^\s*(from|import) pxgrpc\._proto", p.read_text(), re.MULTILINE)
    ]
    assert sorted(importers) == ["pxgrpc/messages.py", "pxgrpc/wire.py"]
