"""Hosts as Linux network namespaces on one bridge, for tests that need real separate hosts.

    lan = NetnsLan("10.77.0")                   # a temp dir and names unique to this run
    try:
        lan.build({"ctl": 1, "e1": 2})          # ctl is 10.77.0.1, e1 is 10.77.0.2
        proc = lan.spawn("e1", [sys.executable, "-c", "..."], env=pxgrpc_env(lan.root / "e1"))
        lan.set_link("e1", up=False)            # pull e1's cable
    finally:
        lan.teardown()                          # processes, namespaces, links, /etc/netns, temp dir

Each host has one interface, eth0, on a bridge that lives in a namespace of its own, or in the
root namespace (with an address there) when `gateway=` is given, so that processes of the test
itself can reach the hosts. Needs root and iproute2: `namespaces_unavailable()` says why not.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

ETC_NETNS = Path("/etc/netns")  # `ip netns exec NS` bind-mounts /etc/netns/NS/FILE over /etc/FILE


def ip(*args: str) -> None:
    """Run `ip ARGS...`, raising CalledProcessError (with its stderr) when it fails."""
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def namespaces_unavailable(tools: tuple[str, ...] = ()) -> str | None:
    """Why this machine cannot create network namespaces (or lacks one of `tools`), or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces exist on Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CI runs as root)"
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2, openssh-server, openssh-client)"
    probe = f"pxprobe-{secrets.token_hex(3)}"
    try:
        ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"`ip netns add` failed: {exc.stderr.strip()}"
    with contextlib.suppress(subprocess.CalledProcessError):
        ip("netns", "del", probe)
    return None


def pxgrpc_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a pxgrpc process on a host whose PXGRPC_DIR is `home`."""
    env = {**os.environ, "PXGRPC_DIR": str(home), "PYTHONUNBUFFERED": "1", **(extra or {})}
    env.pop("PXGRPC_CONNECTION_FILE", None)
    return env


class NetnsLan:
    """Network namespaces on one bridge, host `h` at `{subnet}.{number}`; all removed by teardown."""

    def __init__(self, subnet: str, *, gateway: int | None = None, prefix: str = "px") -> None:
        self.subnet = subnet
        self.gateway = gateway
        self.tag = secrets.token_hex(3)
        self.prefix = prefix
        self.root = Path(tempfile.mkdtemp(prefix=f"pxgrpc-{prefix}-"))
        self.numbers: dict[str, int] = {}
        self._namespaces: list[str] = []
        self._links: list[str] = []  # in the root namespace
        self._etc_dirs: list[Path] = []
        self._processes: list[subprocess.Popen[str]] = []

    def ns(self, host: str) -> str:
        """The namespace name of `host`, unique to this run."""
        return f"{self.prefix}{self.tag}-{host}"

    def addr(self, host: str) -> str:
        """The address of `host` on the LAN."""
        return f"{self.subnet}.{self.numbers[host]}"

    def build(self, hosts: dict[str, int]) -> None:
        """Make the bridge and one namespace per host, its eth0 up at `{subnet}.{number}/24`."""
        switch = self.ns("sw") if self.gateway is None else ""  # "": the root namespace
        on_switch = ["-n", switch] if switch else []
        bridge = "br0" if switch else f"pxb{self.tag}"
        if switch:
            self._add_namespace(switch)
        ip(*on_switch, "link", "add", bridge, "type", "bridge")
        if not switch:
            self._links.append(bridge)
            ip("addr", "add", f"{self.subnet}.{self.gateway}/24", "dev", bridge)
        ip(*on_switch, "link", "set", bridge, "up")
        for host, number in hosts.items():
            ns, port = self.ns(host), f"pxv{self.tag}{number}"
            self._add_namespace(ns)
            self.numbers[host] = number
            where = ["netns", switch] if switch else []
            ip("link", "add", "name", port, *where, "type", "veth", "peer", "name", "eth0", "netns", ns)
            if not switch:
                self._links.append(port)
            ip(*on_switch, "link", "set", port, "master", bridge, "up")
            ip("-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._namespaces.append(name)

    def set_link(self, host: str, *, up: bool) -> None:
        """Plug (`up=True`) or pull `host`'s cable: its eth0 goes up or down."""
        ip("-n", self.ns(host), "link", "set", "eth0", "up" if up else "down")

    def write_etc(self, host: str, name: str, text: str) -> None:
        """Give `host` its own /etc/NAME (e.g. "hosts"), seen by processes run in its namespace."""
        if not ETC_NETNS.exists():
            ETC_NETNS.mkdir()
            self._etc_dirs.append(ETC_NETNS)  # removed last, if still empty
        etc = ETC_NETNS / self.ns(host)
        if not etc.exists():
            etc.mkdir(parents=True)
            self._etc_dirs.append(etc)
        (etc / name).write_text(text)

    def spawn(
        self,
        host: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        output: IO[Any] | None = None,
    ) -> subprocess.Popen[str]:
        """Start `argv` on `host` in its own process group, killed by teardown. Its output is
        piped (stdout with stderr) unless `output` is a file; `stdin=True` pipes its input."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *argv],
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if output is None else output,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._processes.append(proc)
        return proc

    def run(
        self, host: str, argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` on `host` to completion, capturing its output (TimeoutExpired: it hung)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def pids(self, host: str) -> list[int]:
        """The processes running in `host`'s namespace."""
        listed = subprocess.run(
            ["ip", "netns", "pids", self.ns(host)], capture_output=True, text=True, timeout=10
        )
        return [int(pid) for pid in listed.stdout.split()]

    def teardown(self) -> None:
        """Kill every process spawned or still running in the namespaces; remove all this made."""
        for proc in self._processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self._processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            for pipe in (proc.stdout, proc.stdin):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        for host in self.numbers:
            for pid in self.pids(host):  # e.g. started by a daemon the test ran there
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for name in reversed(self._namespaces):
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                ip("netns", "del", name)
        for link in reversed(self._links):  # mostly gone with their peers' namespaces
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                ip("link", "del", link)
        for etc in reversed(self._etc_dirs):
            if etc == ETC_NETNS:
                with contextlib.suppress(OSError):
                    etc.rmdir()
            else:
                shutil.rmtree(etc, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
