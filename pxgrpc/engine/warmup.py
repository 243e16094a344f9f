"""An engine's first transfer as quick as its later ones: the data paths are run once at start.

Engines forked from the warmed forkserver (`pxgrpc.engine.forkserver`) share its imported
modules copy-on-write. The first time an engine runs a code path it writes to the pages of the
objects that path uses (reference counts, caches), and the kernel copies each such page then.
With 64 engines on 2 cores, a user's first broadcast paid that for every engine: about 0.3 ms
each, and the first push to all engines took nearly twice as long as later ones.

`warm_up` runs what a push of an array, an apply and a pull do in an engine, once, on a kernel
of its own (the engine's namespace and execution count are not touched): the array is encoded
into a blob, written into a shared-memory file and mapped privately when this host shares
memory, decoded and bound (both ways: as a task's value, and as a lane's push the engine
answers the moment it reads it, `Kernel.push_shared`); a function sent by value is applied; the
array is pulled and encoded again. The engine does it while its registration is on its way to
the controller.
"""

from __future__ import annotations

import logging
import sys

import numpy as np

from pxgrpc import sharedmem, wire
from pxgrpc.blobstream import IncomingBlob
from pxgrpc.engine.kernel import Kernel

log = logging.getLogger(__name__)

#: Bytes of the array the warm-up pushes: just more than what travels inline, so it takes a blob.
WARM_BYTES = wire.INLINE_LIMIT + 4096


def _size(values: list[int]) -> int:
    """The warm-up's applied function: sent by value and rebound, as a user's function is."""
    return len(values)


_size.__module__ = "__main__"


def warm_up() -> None:
    """Run a push, an apply and a pull through this engine's code once (never raises)."""
    try:
        _push_and_pull()
    except Exception as exc:  # noqa: BLE001 - a warm-up must never keep an engine from serving
        log.debug("warm-up skipped: %s", exc)


def _push_and_pull() -> None:
    encoder = wire.Encoder()
    action = wire.pb.Action()
    encoder.encode_into(np.zeros(WARM_BYTES // 8), action.push.namespace["warm"])
    blob = encoder.blob
    assert blob is not None
    blobs: dict[str, IncomingBlob] = {}
    shared = None
    if sharedmem.enabled():
        shared = sharedmem.SharedFile(blob.size)
        shared.write_chunks(blob.parts)
        header = wire.pb.BlobHeader(blob_id=blob.blob_id, size=blob.size, shared=shared.describe())
        blobs[blob.blob_id] = sharedmem.map_blob(blob.blob_id, header)
    main = sys.modules.get("__main__")
    try:
        kernel = Kernel()  # (which makes its namespace sys.modules["__main__"]: put back below)
        if blobs:
            kernel.run(action, blobs)
            task = wire.pb.Task(action=action)  # (and a lane's push, as an engine answers it at once)
            task.shared_blobs.append(header)
            kernel.push_shared(task)
        else:
            kernel.namespace["warm"] = np.zeros(WARM_BYTES // 8)
        if "IPython" not in sys.modules:  # (else the kernel would make an IPython shell for it)
            apply = wire.pb.Action()
            small = wire.Encoder()
            small.encode_into(_size, apply.apply.function)
            small.encode_into([WARM_BYTES], apply.apply.args.add())
            kernel.run(apply, {})
        pull = wire.pb.Action()
        pull.pull.names.append("warm")
        pull.pull.single = True
        outcome = kernel.run(pull, {})
        wire.encode(outcome.value)
        kernel.namespace.clear()
    finally:
        if main is not None:
            sys.modules["__main__"] = main
        if shared is not None:
            shared.close()
