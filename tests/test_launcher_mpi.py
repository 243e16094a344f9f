"""The mpi launcher with Open MPI's (or MPICH's) real `mpiexec`: engine ids are MPI ranks, so
mpi4py collectives work across the engines of a view."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from test_launchers import engine_processes

import pxgrpc as ipp
from pxgrpc.launchers import LaunchError

pytestmark = pytest.mark.timeout(120)

mpi4py = pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install '.[mpi]')")
if shutil.which("mpiexec") is None:
    pytest.skip("mpiexec is not installed (apt-get install openmpi-bin)", allow_module_level=True)


def rank_and_sum() -> tuple[int, int | None, int]:
    from mpi4py import MPI

    import pxgrpc

    comm = MPI.COMM_WORLD
    return comm.rank, pxgrpc.engine_id(), comm.allreduce(comm.rank)


def test_mpi_engines_have_their_rank_as_id_and_allreduce_across_engines() -> None:
    cluster = ipp.Cluster(n=4, engines="mpi", timeout=60)
    with cluster as rc:
        assert rc.ids == [0, 1, 2, 3]
        results = rc[:].apply_sync(ipp.interactive(rank_and_sum))
        assert results == [(rank, rank, 6) for rank in range(4)]
        # an execute cell, as `%%px` sends it
        rc[:].execute("from mpi4py import MPI\ntotal = MPI.COMM_WORLD.allreduce(1)", block=True)
        assert rc[:].pull("total", block=True) == [4, 4, 4, 4]
    assert engine_processes(cluster.cluster_id) == []


def test_engine_id_is_none_outside_an_engine() -> None:
    assert ipp.engine_id() is None


def test_a_missing_mpiexec_fails_the_start_naming_the_launcher() -> None:
    cluster = ipp.Cluster(n=2, engines="mpi", timeout=20, env={"PATH": "/nonexistent"})
    with pytest.raises(LaunchError, match=r"mpi launcher.*'mpiexec' is not on PATH"), cluster:
        pass
    assert cluster.controller is None


def test_an_engine_asking_for_a_taken_id_is_refused_with_a_clear_error(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster, rc = make_cluster(n=1)
    result = subprocess.run(
        [sys.executable, "-m", "pxgrpc.engine", "--file", str(cluster.connection_file), "--mpi"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OMPI_COMM_WORLD_RANK": "0"},
    )
    assert result.returncode == 2
    assert "engine id 0 is taken" in result.stderr
    assert rc[:].apply_sync(ipp.engine_id) == [0]
