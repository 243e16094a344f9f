"""Generate pxgrpc/_proto from protos/ with grpcio-tools.

Usage: python scripts/gen_protos.py [OUT_DIR]   (default: pxgrpc/_proto)

protoc writes imports such as ``from pxgrpc.v1 import value_pb2``; we place the modules under
``pxgrpc/_proto/`` and rewrite those imports so the generated code is a private subpackage.
"""

from __future__ import annotations

import re
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
IMPORT_RE = re.compile(r"^from pxgrpc\.v1 import (\w+_pb2)", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every .proto under protos/pxgrpc/v1 and return the files written."""
    staging = out_dir / "_staging"
    staging.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "pxgrpc" / "v1").glob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={staging}",
        f"--grpc_python_out={staging}",
        f"--mypy_out={staging}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for src in sorted((staging / "pxgrpc" / "v1").iterdir()):
        text = IMPORT_RE.sub(r"from pxgrpc._proto import \1", src.read_text())
        dst = out_dir / src.name
        dst.write_text(text)
        written.append(dst)
    for p in sorted(staging.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    staging.rmdir()
    init = out_dir / "__init__.py"
    init.write_text(
        '"""Generated protobuf and gRPC code (make protos). Import it only from pxgrpc.wire."""\n'
    )
    return [init, *written]


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "pxgrpc" / "_proto"
    for path in generate(out):
        print(path.relative_to(out.parent) if out.parent in path.parents else path)
