"""Engines on other hosts over OpenSSH: one `ssh` per host starts that host's engines.

    ssh -o BatchMode=yes -o ConnectTimeout=10 [SSH_ARGS] HOST sh -c '...'   (stdin: the file)

The system's `ssh` is used as is: the user's keys, agent and `~/.ssh/config` (host aliases,
jump hosts, ports) all apply; `ssh_args=` adds options (`-F config`, `-i key`). The engine-only
connection file travels over that connection, on stdin, into `~/.pxgrpc/run/CLUSTER-HOST/` on
the host (created under `umask 077`, so mode 0600 in a 0700 directory; written under a temporary
name and renamed, so no engine reads half of it) and is removed when the engines stop. The
remote shell records its engines' pids there, so `stop` can end them with a second ssh even if
the first one has died.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import time
from typing import Any

from pxgrpc.client.errors import PxError
from pxgrpc.launchers.base import (
    TAIL_LINES,
    EngineSpec,
    LaunchError,
    LauncherState,
    is_loopback,
    python_path,
    reap,
    run_tool,
    tail,
)

#: What the remote shell prints once its engines are started (marks a connection that worked).
STARTED = "pxgrpc-ssh: started"
#: ssh's exit status when the connection itself failed (unknown host, refused key, timeout).
SSH_FAILED = 255


def parse_hosts(hosts: Any) -> dict[str, int]:
    """Hosts and engine counts from `{"node1": 4}`, `["node1:4", "node2"]` or `"node1:4,node2:4"`
    (a host without a count gets one engine)."""
    if isinstance(hosts, dict):
        items = list(hosts.items())
    else:
        entries = hosts.split(",") if isinstance(hosts, str) else list(hosts)
        items = []
        for entry in entries:
            name, _, count = str(entry).strip().rpartition(":") if ":" in str(entry) else (entry, "", "1")
            items.append((str(name).strip(), count))
    parsed: dict[str, int] = {}
    for name, count in items:
        try:
            engines = int(count)
        except (TypeError, ValueError):
            raise PxError(f"hosts: {name!r} needs a whole number of engines, not {count!r}") from None
        if not name or engines < 1:
            raise PxError(f"hosts: each host needs a name and at least one engine (got {name!r}: {count!r})")
        parsed[str(name)] = parsed.get(str(name), 0) + engines
    if not parsed:
        raise PxError("hosts: name at least one host, e.g. hosts={'node1': 4} or --hosts node1:4")
    return parsed


def route_address(host: str) -> str:
    """This machine's address on the interface that routes to `host` (no packet is sent)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, 22, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(address)
            return str(probe.getsockname()[0])
    except OSError as exc:
        raise PxError(
            f"cannot tell which of this host's addresses {host} can reach ({exc}): "
            "check the host name, or pass controller_ip= (--controller-ip)"
        ) from None


class SSHLauncher:
    """Starts engines on `hosts` (`{"node1": 4, "node2": 4}`) with the system's ssh."""

    name = "ssh"
    OPTIONS = ("hosts", "remote_python", "ssh_args", "ssh")

    def __init__(
        self,
        hosts: Any = None,
        remote_python: str | None = None,
        ssh_args: list[str] | None = None,
        ssh: str = "ssh",
    ) -> None:
        if hosts is None:
            raise PxError("the ssh launcher needs hosts=, e.g. hosts={'node1': 4} or --hosts node1:4")
        self.hosts = parse_hosts(hosts)
        self.python = remote_python
        self.ssh_args = list(ssh_args or [])
        self.ssh = ssh
        self.connect_timeout = 10.0
        self.cluster_tag = "default"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, str] = {}

    # --- where things are -------------------------------------------------------------------

    def _base_command(self, host: str) -> list[str]:
        return [
            self.ssh,
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={max(1, int(self.connect_timeout))}",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=3",
            *self.ssh_args,
            host,
        ]

    def resolved_host(self, host: str) -> str:
        """The address ssh dials for `host`, after its config (`ssh -G`); the name itself when
        ssh cannot tell."""
        result = run_tool([self.ssh, "-G", *self.ssh_args, host], timeout=10)
        found = re.search(r"^hostname (\S+)$", result.stdout, re.MULTILINE)
        return found.group(1) if result.returncode == 0 and found else host

    def remote_dir(self, host: str) -> str:
        label = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.cluster_tag}-{host}")
        return f"$HOME/.pxgrpc/run/{label}"

    def expected(self) -> int:
        return sum(self.hosts.values())

    def controller_ip(self) -> str | None:
        first = next(iter(self.hosts))
        address = route_address(self.resolved_host(first))
        return None if is_loopback(address) else address

    # --- starting ---------------------------------------------------------------------------

    def start(self, spec: EngineSpec) -> None:
        self.connect_timeout = min(10.0, spec.timeout)
        self.cluster_tag = spec.cluster_id or "default"
        try:
            contents = spec.engine_file.read_bytes()
        except OSError as exc:
            raise LaunchError(self.name, "", f"cannot read the engine connection file: {exc}") from exc
        python = self.python or python_path()
        for host, count in self.hosts.items():
            log = spec.log_path(f"ssh-{re.sub(r'[^A-Za-z0-9_.-]', '_', host)}")
            self.logs[host] = str(log)
            script = self._start_script(spec, host, count, python)
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [*self._base_command(host), f"sh -c {shlex.quote(script)}"],
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=spec.env,
                    start_new_session=True,
                )
            self.processes[host] = proc
            assert proc.stdin is not None
            try:
                proc.stdin.write(contents)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ssh already gave up: check() reports why, from its log

    def _start_script(self, spec: EngineSpec, host: str, count: int, python: str) -> str:
        engine = spec.engine_command(python, "$d/engine.json")
        line = " ".join(shlex.quote(a) for a in engine).replace("'$d/engine.json'", '"$d/engine.json"')
        return f"""umask 077
d="{self.remote_dir(host)}"
mkdir -p "$d" && cat > "$d/.engine.json.tmp" && mv -f "$d/.engine.json.tmp" "$d/engine.json" || exit 1
pids=""
trap 'kill $pids 2>/dev/null; rm -rf "$d"; exit 143' TERM HUP INT
i=0
while [ $i -lt {count} ]; do
  {line} </dev/null &
  pids="$pids $!"
  i=$((i+1))
done
echo "$pids" > "$d/pids"
echo "{STARTED}$pids on $(hostname)" >&2
wait
rm -rf "$d"
"""

    # --- watching ---------------------------------------------------------------------------

    def check(self) -> None:
        for host, proc in self.processes.items():
            code = proc.poll()
            if code is None:
                continue
            problem = (
                f"ssh could not connect or log in (status {code})"
                if code == SSH_FAILED and not self._started(host)
                else f"the engines' shell exited with status {code} before they registered"
            )
            raise LaunchError(self.name, f"host {host}", problem, self.last_stderr(host=host))

    def _started(self, host: str) -> bool:
        return any(STARTED in line for line in tail(self.logs.get(host, ""), 200))

    def state(self) -> LauncherState:
        if not self.processes:
            return LauncherState(self.name, True, detail="hosts " + ", ".join(self.hosts))
        codes = {h: p.poll() for h, p in self.processes.items()}
        running = [h for h, c in codes.items() if c is None]
        ended = [c for c in codes.values() if c is not None]
        return LauncherState(
            self.name,
            bool(running),
            exit_code=ended[0] if ended and not running else None,
            detail="hosts " + ", ".join(f"{h} ({'running' if c is None else c})" for h, c in codes.items()),
        )

    def last_stderr(self, lines: int = TAIL_LINES, host: str | None = None) -> list[str]:
        for name in [host] if host else list(self.logs):
            found = [line for line in tail(self.logs.get(name or "", ""), lines + 2) if STARTED not in line]
            if found:
                return found[-lines:]
        return []

    def local_processes(self) -> list[subprocess.Popen[bytes]]:
        return list(self.processes.values())

    # --- stopping ---------------------------------------------------------------------------

    def stop(self, grace: float = 3.0) -> None:
        """Let the engines exit (they were usually told to), then make sure on every host
        that no engine is left and the connection file is gone."""
        deadline = time.monotonic() + grace
        while any(p.poll() is None for p in self.processes.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        reap(list(self.processes.values()), 0.0)
        tidy = [h for h in self.hosts if self._needs_cleanup(h)]
        cleaners = {h: self._spawn_cleanup(h) for h in tidy}
        failures = []
        for host, proc in cleaners.items():
            try:
                _, err = proc.communicate(timeout=self.connect_timeout + 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode not in (0, None):
                failures.append(f"{host}: {err.decode(errors='replace').strip()}")
        self.processes = {}
        if failures:
            raise LaunchError(self.name, "stop", "could not clean up on " + "; ".join(failures))

    def _needs_cleanup(self, host: str) -> bool:
        proc = self.processes.get(host)
        if proc is None:
            return True  # restored from saved state: we do not know, so look
        # A clean exit means the remote shell saw its engines end and removed its directory;
        # a failed connection never started anything.
        return not (proc.returncode == 0 or (proc.returncode == SSH_FAILED and not self._started(host)))

    def _spawn_cleanup(self, host: str) -> subprocess.Popen[bytes]:
        script = f"""d="{self.remote_dir(host)}"
[ -d "$d" ] || exit 0
pids=$(cat "$d/pids" 2>/dev/null)
alive() {{ for p in $pids; do kill -0 $p 2>/dev/null && return 0; done; return 1; }}
[ -n "$pids" ] && kill -TERM $pids 2>/dev/null
n=0
while alive && [ $n -lt 30 ]; do sleep 0.1; n=$((n+1)); done
alive && kill -KILL $pids 2>/dev/null
rm -rf "$d"
exit 0
"""
        return subprocess.Popen(
            [*self._base_command(host), f"sh -c {shlex.quote(script)}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    # --- saving -----------------------------------------------------------------------------

    def saved(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hosts": self.hosts,
            "ssh_args": self.ssh_args,
            "ssh": self.ssh,
            "cluster_tag": self.cluster_tag,
            "logs": self.logs,
        }

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> SSHLauncher:
        launcher = cls(hosts=saved["hosts"], ssh_args=saved.get("ssh_args"), ssh=saved.get("ssh", "ssh"))
        launcher.cluster_tag = saved.get("cluster_tag", "default")
        launcher.logs = dict(saved.get("logs", {}))
        return launcher
