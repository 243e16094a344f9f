"""What views ask engines to do (`Execute`, `Apply`, `Push`, `Pull`), as plain data, and how an
action is written into its protobuf message for the transport to submit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pxgrpc import blobstream, wire


@dataclass
class Execute:
    code: str
    silent: bool = False


@dataclass
class Apply:
    function: Any
    args: Sequence[Any] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Push:
    namespace: dict[str, Any]


@dataclass
class Pull:
    names: list[str]
    single: bool = False


Action = Execute | Apply | Push | Pull


def encode_action(
    action: Action, message: wire.pb.Action, function_cache: dict[int, wire.pb.Value] | None = None
) -> blobstream.OutgoingBlob | None:
    """Write an action into its protobuf message; return the blob its large values need.

    `function_cache` (one per map or scatter call) encodes a function applied many times once.
    """
    encoder = wire.Encoder()
    if isinstance(action, Execute):
        message.execute.code = action.code
        message.execute.silent = action.silent
    elif isinstance(action, Apply):
        apply = message.apply
        cached = function_cache.get(id(action.function)) if function_cache is not None else None
        if cached is None:
            cached = encoder.encode(action.function)
            if function_cache is not None and encoder.blob is None:
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
