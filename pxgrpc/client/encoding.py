"""Actions into the protobuf messages a `SubmitTask` carries, and the blob their large values
need (the transport's side of `pxgrpc.client.tasks`' records)."""

from __future__ import annotations

from pxgrpc import blobstream, wire
from pxgrpc.client import funcache
from pxgrpc.client.tasks import Action, Apply, Execute, Push


def encode_action(
    action: Action, message: wire.pb.Action, function_cache: dict[int, wire.pb.Value] | None = None
) -> blobstream.OutgoingBlob | None:
    """Write an action into its protobuf message; return the blob its large values need.

    `function_cache` (one per map or scatter call) encodes a function applied many times once;
    across calls, `funcache` keeps the encoding of functions whose bytes cannot change.
    """
    encoder = wire.Encoder()
    if isinstance(action, Execute):
        message.execute.code = action.code
        message.execute.silent = action.silent
    elif isinstance(action, Apply):
        apply = message.apply
        cached = function_cache.get(id(action.function)) if function_cache is not None else None
        if cached is None:
            cached = funcache.lookup(action.function)
        if cached is None:
            cached = encoder.encode(action.function)
            if encoder.blob is None:
                funcache.store(action.function, cached)
                if function_cache is not None:
                    function_cache[id(action.function)] = cached
        apply.function.CopyFrom(cached)
        for arg in action.args:
            encoder.encode_into(arg, apply.args.add())
        for key, val in action.kwargs.items():
            encoder.encode_into(val, apply.kwargs[key])
    elif isinstance(action, Push):
        ns = message.push.namespace
        for key, val in action.namespace.items():
            encoder.encode_into(val, ns[key])
    else:
        message.pull.names.extend(action.names)
        message.pull.single = action.single
    return encoder.blob


def address(submit: wire.pb.SubmitTask, task_id: str, target: int | None) -> wire.pb.SubmitTask:
    """Fill in who runs the task (None: the controller picks, load-balanced)."""
    submit.task_id = task_id
    if target is None:
        submit.engine_id = -1
        submit.load_balanced = True
    else:
        submit.engine_id = target
    return submit
