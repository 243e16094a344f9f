"""Launchers: the ways a cluster starts its engines (local, ssh, mpi, slurm), behind one contract.

See `pxgrpc.launchers.base` for the contract and `launcher_for(name)` for the factory.
"""

from pxgrpc.launchers.base import (
    LAUNCHERS,
    EngineSpec,
    Launcher,
    LaunchError,
    LauncherState,
    launcher_for,
    restore,
)

__all__ = ["LAUNCHERS", "EngineSpec", "LaunchError", "Launcher", "LauncherState", "launcher_for", "restore"]
