"""Reading requests: parse raw bytes into a message, check the fields every call shares.

The services are registered as generic handlers that take raw bytes (see `server.generic_handlers`),
so that a malformed message gets INVALID_ARGUMENT naming the message, and so that blob chunks can
be relayed without being parsed at all.
"""

from __future__ import annotations

from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from pxgrpc import wire

M = TypeVar("M", bound=Message)
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


async def parse(cls: type[M], raw: bytes, context: Context) -> M:
    """Parse a request, or abort the call with INVALID_ARGUMENT naming the message type."""
    try:
        return cls.FromString(raw)
    except DecodeError as exc:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"{cls.DESCRIPTOR.name}: not a valid message ({exc})"
        )
        raise  # unreachable: abort raises


async def check_names(names: Any, field: str, context: Context) -> None:
    """Abort with INVALID_ARGUMENT unless every name is a Python identifier."""
    for name in names:
        if not str(name).isidentifier():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {name!r} is not a Python identifier"
            )


async def check_encoding(encoding: int, context: Context) -> None:
    """Abort with INVALID_ARGUMENT unless ``encoding`` is a known ResultEncoding."""
    if encoding not in (wire.ENCODING_PICKLE, wire.ENCODING_TYPED_ONLY, wire.ENCODING_TYPED_OR_REPR):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"encoding: unknown ResultEncoding {encoding} (0 PICKLE, 1 TYPED_ONLY, 2 TYPED_OR_REPR)",
        )
