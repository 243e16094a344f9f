"""Who this process is, for code running on an engine: its engine id and, under mpiexec, its MPI rank."""

from __future__ import annotations

import os

#: Set once the engine has registered; None in any process that is not an engine.
_engine_id: int | None = None

#: Environment variables that carry a process's rank under the common MPI launchers
#: (Open MPI, PMIx, MPICH/Hydra and Intel MPI).
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")


def engine_id() -> int | None:
    """The id of the engine this code runs on, or None outside an engine.

    >>> import pxgrpc
    >>> rc[:].apply_sync(pxgrpc.engine_id)     # on each engine: its own id
    [0, 1, 2, 3]
    """
    return _engine_id


def set_engine_id(value: int) -> None:
    """Record the id the controller gave this engine (called by the engine once registered)."""
    global _engine_id
    _engine_id = value


def mpi_rank() -> int | None:
    """This process's rank in MPI_COMM_WORLD, or None when it was not started by an MPI launcher.

    Uses mpi4py when it is installed (which also initializes MPI in this process, so that user
    code can use collectives), else the rank the launcher put in the environment.
    """
    try:
        from mpi4py import MPI
    except ImportError:
        pass
    else:
        return int(MPI.COMM_WORLD.Get_rank())
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None
