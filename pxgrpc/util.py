"""ipyparallel's `util` names that user code imports: `from pxgrpc.util import interactive`.

A thin module; `interactive` itself lives in `pxgrpc` (light to import, engines use it too).
"""

from pxgrpc import interactive

__all__ = ["interactive"]
