"""The pxgrpc controller: engine registry, task routing, output fan-in, blob relay."""

from pxgrpc.controller.server import Controller, ControllerConfig

__all__ = ["Controller", "ControllerConfig"]
