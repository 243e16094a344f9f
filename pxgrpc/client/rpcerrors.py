"""gRPC failures as pxgrpc errors, in one table (as httpx maps httpcore's errors in one place).

The transport wraps every call to the controller or an engine in `map_rpc_errors(url)`; the
first call of a connection goes through `diagnosed_error`, which looks at the server first to say
whether the token, the TLS setup or the address is wrong.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc

from pxgrpc import diagnose
from pxgrpc.client.errors import AuthenticationError, PxConnectionError, TLSError

#: status -> (error class, message); the message is formatted with the `peer` called ("the
#: controller", or an engine's data endpoint) and its `url`, the call's `details`, the status
#: `name` and a `hint` (what to check, for the controller). Any other status: OTHER_ERROR.
STATUS_ERRORS: dict[grpc.StatusCode, tuple[type[PxConnectionError], str]] = {
    grpc.StatusCode.UNAUTHENTICATED: (
        AuthenticationError,
        "{peer} at {url} refused our credentials: {details}. Use the token from its connection file",
    ),
    grpc.StatusCode.UNAVAILABLE: (
        PxConnectionError,
        "cannot reach {peer} at {url}: {details}.{hint}",
    ),
}

OTHER_ERROR: tuple[type[PxConnectionError], str] = (
    PxConnectionError,
    "{peer} at {url}: {name} {details}",
)


CONTROLLER = "the controller"
ENGINE = "the engine's data endpoint"


def rpc_error(exc: grpc.RpcError, url: str, peer: str = CONTROLLER) -> PxConnectionError:
    """A gRPC failure as an error that says what happened and what to do."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else ""
    kind, message = STATUS_ERRORS.get(code, OTHER_ERROR) if code is not None else OTHER_ERROR
    hint = " Is it running? (`pxgrpc cluster status`)" if peer == CONTROLLER else ""
    return kind(message.format(peer=peer, url=url, details=details, name=name, hint=hint), name)


@contextlib.contextmanager
def map_rpc_errors(url: str, peer: str = CONTROLLER) -> Iterator[None]:
    """Raise a gRPC failure inside the block as the matching `PxConnectionError`, naming the
    peer called (the controller, or an engine's data endpoint) and its address."""
    try:
        yield
    except grpc.RpcError as exc:
        raise rpc_error(exc, url, peer) from None


def diagnosed_error(found: diagnose.Diagnosis, code: str) -> PxConnectionError:
    """The client error for a diagnosed connection failure (credentials, TLS, or reachability)."""
    if found.cause in diagnose.CREDENTIAL_CAUSES:
        return AuthenticationError(found.message, code, str(found.cause))
    if found.cause in diagnose.TLS_CAUSES:
        return TLSError(found.message, code, str(found.cause))
    return PxConnectionError(found.message, code, str(found.cause))
