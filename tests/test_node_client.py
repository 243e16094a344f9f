"""The Node.js example client (examples/node) drives a real cluster, in plain text and with mutual TLS."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.timeout(120)

NODE_DIR = pathlib.Path(__file__).resolve().parent.parent / "examples" / "node"


def _skip_reason() -> str | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not installed"
    if not (NODE_DIR / "node_modules").is_dir():
        return "examples/node/node_modules is missing: run `npm ci` in examples/node (.ci/run does)"
    return None


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
@pytest.mark.parametrize(
    "controller_args", [[], ["--tls", "auto", "--tls-client-auth"]], ids=["plaintext", "mutual-tls"]
)
def test_node_client_runs_code_moves_typed_values_and_scatters(make_cluster, controller_args) -> None:  # type: ignore[no-untyped-def]
    cluster, rc = make_cluster(n=2, controller_args=controller_args)
    run = subprocess.run(
        ["node", "demo.js", str(cluster.connection_file)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    lines = run.stdout.splitlines()
    pids = rc[:].apply_sync(__import__("os").getpid)

    assert "engines: [0,1]" in lines
    # Live output: each engine was interrupted because the client saw its line while it ran.
    for engine_id, pid in enumerate(pids):
        assert f"[stdout:{engine_id}] engine working in pid {pid}" in lines
    assert "live output, then interrupted: 0=KeyboardInterrupt 1=KeyboardInterrupt" in lines

    assert (
        "python sees: n=int x=float big=int s=str ok=bool nothing=NoneType raw=bytes list=list obj=dict "
        "vec=ndarray[float64](3,) ints=ndarray[int32](3,) mat=ndarray[float32](2, 3) "
        "large=ndarray[float64](100000,) blob=bytes"
    ) in lines
    assert "round trip: ok (14 values)" in lines
    assert "computed in Python: doubled=1,3,5 total=2499975000" in lines

    assert any(line.startswith("typed-only pull of a set: EncodingError: a builtins.set") for line in lines)
    assert "repr pull of a set: builtins.set {1, 2, 3}" in lines

    assert "[stdout:0] my part: [0, 1, 2, 3, 4]" in lines
    assert "[stdout:1] my part: [5, 6, 7, 8, 9]" in lines
    assert "gathered: [0,1,4,9,16,25,36,49,64,81]" in lines
    assert "gathered array: 0.5,1.5,2.5,3.5,4.5,5.5,6.5,7.5,8.5,9.5,10.5" in lines

    # The Python client sees what the Node client left behind.
    assert rc[:].pull("part", block=True) == [[0, 1, 4, 9, 16], [25, 36, 49, 64, 81]]
