"""What importing a part of pxgrpc loads: engines do not load the client, nothing in the core
loads the IPython front end, and the lazy `pxgrpc` namespace still offers the whole API."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

import pxgrpc

FRONT_END = ("pxgrpc.ipython", "IPython", "tqdm")


def loaded_after(code: str) -> list[str]:
    """The modules in sys.modules after running `code` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return list(json.loads(out.splitlines()[-1]))


def test_an_engine_does_not_import_the_client_or_the_ipython_front_end() -> None:
    modules = loaded_after("import pxgrpc.engine.__main__")
    unwanted = [m for m in modules if m.startswith(("pxgrpc.client", "pxgrpc.cluster", *FRONT_END))]
    assert unwanted == []


def test_a_client_outside_ipython_does_not_import_the_front_end() -> None:
    modules = loaded_after("import pxgrpc as ipp\nipp.Client, ipp.DirectView, ipp.Cluster")
    assert "pxgrpc.client.client" in modules
    assert [m for m in modules if m.startswith(FRONT_END)] == []


def test_the_lazy_namespace_offers_every_name_of_all() -> None:
    for name in pxgrpc.__all__:
        assert getattr(pxgrpc, name) is not None
    assert set(pxgrpc.__all__) <= set(dir(pxgrpc))
    with pytest.raises(AttributeError, match="no_such_name"):
        pxgrpc.no_such_name  # noqa: B018


def test_star_import_gives_the_client_api() -> None:
    namespace: dict[str, object] = {}
    exec("from pxgrpc import *", namespace)
    assert namespace["Client"] is pxgrpc.Client
    assert namespace["RemoteError"] is pxgrpc.RemoteError


@pytest.mark.parametrize("listening", [False, True], ids=["closed-port", "silent-port"])
def test_a_client_that_cannot_connect_leaves_no_pending_task_at_exit(listening: bool) -> None:
    # A closed port refuses at once; a listening one that never speaks lets the first call time out.
    script = (
        "import pxgrpc, socket, sys\n"
        "from pxgrpc.security import ConnectionInfo\n"
        "sock = socket.socket()\n"
        "sock.bind(('127.0.0.1', 0))\n"
        "port = sock.getsockname()[1]\n"
        f"sock.listen() if {listening} else sock.close()\n"
        "info = ConnectionInfo(url=f'127.0.0.1:{port}', token='t' * 32, engine_token='e' * 32)\n"
        "try:\n"
        "    pxgrpc.Client(connection_info=info, timeout=0.5)\n"
        "except pxgrpc.PxConnectionError as exc:\n"
        "    print('refused:', type(exc).__name__)\n"
        "else:\n"
        "    sys.exit('connected to nothing?')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout
    assert "Task was destroyed but it is pending" not in proc.stderr
    assert "Exception ignored" not in proc.stderr


PACKAGE = pathlib.Path(pxgrpc.__file__).parent


def sources(*, excluding: tuple[str, ...]) -> dict[str, str]:
    """The package's hand-written modules (relative path -> text), but `excluding`."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith(("_proto/", *excluding)):
            found[relative] = path.read_text(encoding="utf-8")
    return found


def test_only_the_client_holds_the_transport() -> None:
    reaching = [
        name for name, text in sources(excluding=("client/client.py",)).items() if "._transport" in text
    ]
    assert reaching == []


def test_only_the_front_end_hook_imports_the_ipython_front_end() -> None:
    hooks = ("ipython/", "client/frontend.py", "__init__.py")  # (__init__: `%load_ext pxgrpc`)
    importing = {
        name
        for name, text in sources(excluding=hooks).items()
        if "import pxgrpc.ipython" in text or "from pxgrpc.ipython" in text or "from IPython" in text
    }
    # (An engine runs its tasks in an IPython shell of its own: that is no front end.)
    assert importing <= {"engine/ipython.py", "engine/kernel.py"}
