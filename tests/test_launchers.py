"""The launcher contract, seen through the local launcher: picked by name, options checked,
engines that know their id, and failures that say where they happened."""

from __future__ import annotations

import psutil
import pytest

import pxgrpc as ipp
from pxgrpc.client.errors import PxError
from pxgrpc.launchers import LAUNCHERS, Launcher, LaunchError, launcher_for
from pxgrpc.launchers.ssh import parse_hosts


def engine_processes(cluster_id: str) -> list[str]:
    """Command lines of this machine's engine processes of a cluster (their --file names it)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if "pxgrpc.engine" in line and f"controller-{cluster_id}" in line:
            found.append(line)
    return found


pytestmark = pytest.mark.timeout(90)


def test_every_launcher_is_picked_by_name_and_keeps_the_contract() -> None:
    options = {"ssh": {"hosts": {"localhost": 1}}}
    for name in LAUNCHERS:
        launcher = launcher_for(name, **options.get(name, {}))
        assert isinstance(launcher, Launcher) and launcher.name == name


def test_an_unknown_launcher_or_option_is_refused_by_name() -> None:
    with pytest.raises(PxError, match="unknown launcher 'pbs': choose one of local, mpi, slurm, ssh"):
        ipp.Cluster(engines="pbs")
    with pytest.raises(PxError, match="the mpi launcher takes no ssh_args"):
        ipp.Cluster(engines="mpi", ssh_args=["-v"])
    with pytest.raises(PxError, match="the ssh launcher needs hosts="):
        ipp.Cluster(engines="ssh")
    with pytest.raises(PxError, match="n=3, but hosts= names 2 engines"):
        ipp.Cluster(n=3, engines="ssh", hosts="localhost:2")


def test_hosts_are_read_from_a_dict_a_list_or_a_string() -> None:
    assert parse_hosts({"a": 2, "b": 1}) == {"a": 2, "b": 1}
    assert parse_hosts(["a:2", "b"]) == {"a": 2, "b": 1}
    assert parse_hosts("a:2, b:3,a") == {"a": 3, "b": 3}
    with pytest.raises(PxError, match="'a' needs a whole number of engines, not 'x'"):
        parse_hosts("a:x")


def test_engines_know_their_own_id(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster, rc = make_cluster(n=3)
    assert rc[:].apply_sync(ipp.engine_id) == rc.ids == [0, 1, 2]
    assert rc[:].execute("import pxgrpc\nme = pxgrpc.engine_id()", block=True)
    assert rc[:].pull("me", block=True) == [0, 1, 2]
    assert ipp.engine_id() is None
    [state] = [launcher.state() for launcher in cluster.launchers]
    assert state.launcher == "local" and state.running


def test_engines_that_exit_at_start_fail_it_with_their_stderr() -> None:
    cluster = ipp.Cluster(n=2, engine_args=["--no-such-flag"], timeout=30)
    with pytest.raises(LaunchError) as info, cluster:
        pass
    message = str(info.value)
    assert message.startswith("local launcher, this host: ") and "engine(s) exited during start-up" in message
    assert "unrecognized arguments: --no-such-flag" in message
    assert cluster.controller is None and cluster.engines == []


@pytest.mark.timeout(90)
def test_a_stopped_cluster_leaves_only_the_logs_that_say_something(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each engine and the controller log to a file of the cluster's; a clean stop removes the
    ones that stayed empty (a start no longer leaves one per engine behind), as ipyparallel
    removes its processes' output files, and keeps those with something in them."""
    monkeypatch.setenv("PXGRPC_DIR", str(tmp_path))
    cluster = ipp.Cluster(n=2)
    try:
        rc = cluster.start_and_connect_sync(timeout=60)
        logs = sorted(p.name for p in (tmp_path / "logs").glob("*.log"))
        assert len(logs) >= 3, logs  # (two engines' and the controller's, at least)
        rc[1].execute(
            "import sys; print('engine 1 has something to say', file=sys.__stderr__, flush=True)", block=True
        )
    finally:
        cluster.stop_cluster_sync()
    left = list((tmp_path / "logs").glob("*.log"))
    assert [p.read_text() for p in left] == ["engine 1 has something to say\n"], left


def test_empty_logs_of_other_clusters_and_files_not_ours_stay(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Only the cluster's own log names go (not "NAME-notes.log", nor another cluster's
    "NAME-2-engine-0.log"), and none while a cluster whose id extends this one's runs: the
    logs of a cluster "NAME-ssh" ("NAME-ssh-controller.log") look like an ssh host's log."""
    from pxgrpc.clusterstate import remove_empty_logs

    monkeypatch.setenv("PXGRPC_DIR", str(tmp_path))
    logs = tmp_path / "logs"
    logs.mkdir()
    ours = ["job-controller.log", "job-engine-0.log", "job-engine-forkserver-0.log", "job-ssh-node-1.log"]
    kept = ["job-notes.log", "jobs-engine-0.log", "job-2-engine-0.log"]
    sibling = "job-ssh-controller.log"
    for name in [*ours, *kept, sibling]:
        (logs / name).touch()
    (tmp_path / "controller-job-ssh.json").touch()  # (the cluster "job-ssh" runs)
    remove_empty_logs(logs, "job")
    assert sorted(p.name for p in logs.iterdir()) == sorted([*ours, *kept, sibling])
    (tmp_path / "controller-job-ssh.json").unlink()
    remove_empty_logs(logs, "job")
    assert sorted(p.name for p in logs.iterdir()) == sorted(kept)
