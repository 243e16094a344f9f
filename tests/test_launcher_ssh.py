"""The ssh launcher, for real: engine hosts are network namespaces, each running its own sshd.

    root namespace   10.78.0.1 on a bridge: the test, the Cluster and its controller
    h1               10.78.0.2   sshd (host key and authorized key made by this test)
    h2               10.78.0.3   sshd
    ghost            10.78.0.99  nobody: an unreachable host
    badkey           h1 again, with a key h1 does not accept

Hosts are known by name through a test ssh config (`-F`, passed with `ssh_args=`). The
engines reach the controller over TLS on 10.78.0.1, which the Cluster picks by itself. Every
name is unique to the run; namespaces, sshd and the bridge are removed in `finally`. Needs
root, iproute2 and openssh-server; skips, saying why, where they are missing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import pxgrpc as ipp
from pxgrpc.launchers import LaunchError
from tests.netns import NetnsLan, namespaces_unavailable

pytestmark = pytest.mark.timeout(150)

SUBNET = "10.78.0"
HOSTS = {"h1": 2, "h2": 3}
SSHD = "/usr/sbin/sshd"
#: Where the engines' shell on a host keeps the connection file: sshd gives root its home from
#: the password database, and the hosts share this machine's filesystem.
REMOTE_RUN = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".pxgrpc" / "run"


def unavailable() -> str | None:
    """Why this machine cannot make the ssh hosts, or None."""
    return namespaces_unavailable(tools=("ssh", "ssh-keygen", SSHD))


class SshLan:
    """The hosts on a bridge in the root namespace (10.78.0.1), each running its own sshd."""

    def __init__(self) -> None:
        self.net = NetnsLan(SUBNET, gateway=1, prefix="px")
        self.root = self.net.root

    @property
    def config(self) -> Path:
        return self.root / "ssh_config"

    @property
    def python(self) -> Path:
        return self.root / "python"

    def build(self) -> None:
        keys = self.root / "keys"
        keys.mkdir(mode=0o700)
        for name in ("id", "other", "host"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)],
                check=True,
                capture_output=True,
                timeout=30,
            )
        (keys / "authorized_keys").write_text((keys / "id.pub").read_text())
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        self.net.build(HOSTS)
        for host in HOSTS:
            self._start_sshd(host, self.net.addr(host), keys)
        self._write_client_files(keys)

    def _start_sshd(self, host: str, address: str, keys: Path) -> None:
        config = self.root / f"sshd_{host}"
        config.write_text(
            f"ListenAddress {address}\nHostKey {keys / 'host'}\nPermitRootLogin prohibit-password\n"
            f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
        )
        with open(self.root / f"sshd_{host}.log", "ab") as log:  # the daemon keeps its own copy
            self.net.spawn(host, [SSHD, "-D", "-e", "-f", str(config)], output=log)
        deadline = time.monotonic() + 20
        while True:  # wait until sshd accepts connections
            probe = self.net.run(host, ["bash", "-c", f"exec 3<>/dev/tcp/{address}/22"], timeout=10)
            if probe.returncode == 0:
                return
            assert time.monotonic() < deadline, f"sshd on {host} does not listen: see {log.name}"
            time.sleep(0.1)

    def _write_client_files(self, keys: Path) -> None:
        entries = [(h, self.net.addr(h), "id") for h in HOSTS]
        entries += [("ghost", f"{SUBNET}.99", "id"), ("badkey", f"{SUBNET}.2", "other")]
        self.config.write_text(
            "".join(f"Host {h}\n  HostName {a}\n  IdentityFile {keys / k}\n" for h, a, k in entries)
            + "Host *\n  User root\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        )
        # The engines' interpreter on the hosts: this one, seeing this checkout (like a venv).
        path = os.environ.get("PYTHONPATH", "")
        self.python.write_text(f'#!/bin/sh\nPYTHONPATH={path} exec {sys.executable} "$@"\n')
        self.python.chmod(0o755)

    def pxgrpc_processes(self, host: str) -> list[str]:
        """Command lines of pxgrpc processes in `host`'s namespace."""
        found = []
        for pid in self.net.pids(host):
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "pxgrpc.engine" in cmd:
                    found.append(cmd)
        return found


@pytest.fixture(scope="module")
def lan() -> Iterator[SshLan]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"ssh launcher test skipped: {reason}")
    lan = SshLan()
    try:
        lan.build()
        yield lan
    finally:
        lan.net.teardown()


def ssh_cluster(lan: SshLan, hosts: dict[str, int], **kwargs: object) -> ipp.Cluster:
    return ipp.Cluster(
        engines="ssh",
        hosts=hosts,
        ssh_args=["-F", str(lan.config)],
        remote_python=str(lan.python),
        timeout=30,
        **kwargs,  # type: ignore[arg-type]
    )


def _netns() -> str:
    return os.readlink("/proc/self/ns/net")


def test_ssh_engines_on_two_hosts_run_the_seed_workflow_over_tls(lan: SshLan) -> None:
    cluster = ssh_cluster(lan, {"h1": 2, "h2": 2})
    tag = cluster.cluster_id
    try:
        rc = cluster.start_and_connect_sync()
        assert rc.connection_info.uses_tls and rc.connection_info.url.startswith(f"{SUBNET}.1:")
        assert rc.ids == [0, 1, 2, 3]
        places = rc[:].apply_sync(lambda: __import__("os").readlink("/proc/self/ns/net"))
        assert len(set(places)) == 2 and _netns() not in places
        # The engine-only connection file on each host: private, and without the client token.
        for host in ("h1", "h2"):
            shipped = REMOTE_RUN / f"{tag}-{host}" / "engine.json"
            assert shipped.stat().st_mode & 0o777 == 0o600
            assert '"token": ""' in shipped.read_text()
        dv = rc[:]
        dv.execute("import numpy as np\na = np.arange(4)", block=True)
        dv.push({"b": 10}, block=True)
        assert dv.apply_sync(ipp.interactive(lambda: int(a.sum()) + b)) == [16] * 4  # type: ignore[name-defined] # noqa: F821
        dv.scatter("part", np.arange(16), block=True)
        assert np.array_equal(dv.gather("part", block=True), np.arange(16))
        assert dv.apply_sync(ipp.engine_id) == rc.ids
    finally:
        cluster.stop_cluster_sync()
    for host in ("h1", "h2"):
        assert lan.pxgrpc_processes(host) == []
        assert not (REMOTE_RUN / f"{tag}-{host}").exists()


def test_an_unreachable_host_fails_the_start_naming_it_and_leaves_nothing(lan: SshLan) -> None:
    cluster = ssh_cluster(lan, {"h1": 1, "ghost": 1})
    with pytest.raises(LaunchError) as info, cluster:
        pass
    message = str(info.value)
    assert "ssh launcher, host ghost" in message and f"{SUBNET}.99" in message
    assert lan.pxgrpc_processes("h1") == []
    assert cluster.controller is None


def test_a_refused_key_fails_the_start_with_ssh_s_message(lan: SshLan) -> None:
    cluster = ssh_cluster(lan, {"badkey": 1})
    with pytest.raises(LaunchError) as info, cluster:
        pass
    assert "ssh launcher, host badkey" in str(info.value) and "Permission denied" in str(info.value)
    assert lan.pxgrpc_processes("h1") == []


def test_cli_starts_reports_and_stops_ssh_engines(lan: SshLan, pxgrpc_home: str) -> None:
    cluster_id = f"ssh-cli-{secrets.token_hex(2)}"
    base = ["pxgrpc", "cluster"]
    common = ["--cluster-id", cluster_id]
    try:
        started = subprocess.run(
            [
                *base,
                "start",
                *common,
                "--engines",
                "ssh",
                "--hosts",
                "h1:1,h2:1",
                "--ssh-args",
                f"-F {lan.config}",
                "--remote-python",
                str(lan.python),
                "--timeout",
                "40",
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert started.returncode == 0, started.stderr
        status = subprocess.run([*base, "status", *common], capture_output=True, text=True, timeout=30)
        assert "2 engines" in status.stdout and "launcher ssh" in status.stdout
    finally:
        stopped = subprocess.run([*base, "stop", *common], capture_output=True, text=True, timeout=90)
    assert "cluster stopped" in stopped.stdout
    for host in ("h1", "h2"):
        assert lan.pxgrpc_processes(host) == []


def test_a_script_that_forgets_to_stop_leaves_no_engine_on_any_host(lan: SshLan, pxgrpc_home: str) -> None:
    script = (
        "import pxgrpc as ipp\n"
        f"c = ipp.Cluster(engines='ssh', hosts={{'h1': 1, 'h2': 1}}, ssh_args=['-F', {str(lan.config)!r}],\n"
        f"                remote_python={str(lan.python)!r}, timeout=30)\n"
        "rc = c.start_and_connect_sync()\n"
        "print(len(rc.ids))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    assert result.stdout.split() == ["2"], result.stderr
    for host in ("h1", "h2"):
        assert lan.pxgrpc_processes(host) == []
