"""The pxgrpc engine: a Python process that runs tasks sent by the controller."""

from pxgrpc.engine.engine import Engine

__all__ = ["Engine"]
