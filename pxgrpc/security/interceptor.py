"""Token checks on the server side: who may call which gRPC service.

Every pxgrpc server (the controller, an engine's data endpoint) installs a
`TokenAuthInterceptor`. It reads the ``authorization: bearer <token>`` metadata that clients and
engines attach to every call (`pxgrpc.security.tokens.auth_metadata`), compares the token in constant
time with the tokens accepted for the called service, and answers a call it refuses with
``UNAUTHENTICATED`` and a sentence saying what was wrong (no token, the wrong token, an engine
token used as a client token). A service no rule names is refused too: deny by default.

    interceptor = TokenAuthInterceptor(
        {"/pxgrpc.v1.Controller/": {client_token}, "/pxgrpc.v1.Engine/": {engine_token}},
        open_prefixes=("/grpc.health.v1.Health/",),
    )
    server = grpc.aio.server(interceptors=[interceptor])

The tokens themselves are made in `pxgrpc.security.tokens`; connection files and TLS credentials
live next door in the `pxgrpc.security` package.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import grpc
import grpc.aio

from pxgrpc.security.tokens import TOKEN_METADATA_KEY, TOKEN_SCHEME

logger = logging.getLogger(__name__)

_MISSING_TOKEN_MSG = (
    "missing token: send 'authorization: bearer <token>' metadata; the token is in the connection file"
)
_ENGINE_TOKEN_HINT = " (an engine token cannot be used as a client token)"

_TRequest = TypeVar("_TRequest")
_TResponse = TypeVar("_TResponse")


def _bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key != TOKEN_METADATA_KEY:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == TOKEN_SCHEME and token:
            return token.encode("utf-8")
        return None
    return None


def _matches(token: bytes, accepted: frozenset[bytes]) -> bool:
    found = False
    for candidate in accepted:
        found |= hmac.compare_digest(token, candidate)
    return found


def _service_name(method: str) -> str:
    return method.strip("/").split("/", 1)[0]


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped (Any)
    """Checks ``authorization: bearer <token>`` on every RPC.

    ``rules`` maps a full service prefix such as ``"/pxgrpc.v1.Controller/"`` to the set of
    tokens accepted for it (the longest matching prefix wins). ``open_prefixes`` are method-name
    prefixes needing no token (e.g. health). Anything matching no rule and no open prefix is
    rejected (deny by default) with ``UNAUTHENTICATED``.

    ``token_sha256`` maps service prefixes to SHA-256 digests of further accepted tokens: a
    server that must check a token it should not hold (an engine's data endpoint checking
    clients' tokens) accepts any token whose digest matches. Tokens are random 256-bit values
    (`pxgrpc.security.tokens.new_token`), so the digest gives nothing away. `accept_token_sha256` adds
    one later (the engine learns it at registration).
    """

    def __init__(
        self,
        rules: Mapping[str, set[str]],
        open_prefixes: tuple[str, ...] = (),
        token_sha256: Mapping[str, set[bytes]] | None = None,
    ) -> None:
        digests = dict(token_sha256 or {})
        self._digests: dict[str, frozenset[bytes]] = {
            prefix: frozenset(d for d in accepted if d) for prefix, accepted in digests.items()
        }
        self._rules: list[tuple[str, frozenset[bytes]]] = sorted(
            (
                (prefix, _encode_tokens(prefix, rules.get(prefix, ()), warn=prefix not in digests))
                for prefix in {*rules, *digests}
            ),
            key=lambda item: len(item[0]),
            reverse=True,
        )
        self._open_prefixes = tuple(open_prefixes)

    def accept_token_sha256(self, prefix: str, digest: bytes) -> None:
        """Also accept, for the service `prefix` (one of the rules), tokens whose SHA-256 is `digest`."""
        if not any(rule == prefix for rule, _ in self._rules):
            raise ValueError(f"no rule for {prefix!r}")
        if digest:
            self._digests[prefix] = self._digests.get(prefix, frozenset()) | {digest}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails],
            Awaitable[grpc.RpcMethodHandler[_TRequest, _TResponse] | None],
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_TRequest, _TResponse] | None:
        """Pass authorized calls through; answer the others with UNAUTHENTICATED."""
        problem = self.check(handler_call_details.method, handler_call_details.invocation_metadata)
        if problem is None:
            return await continuation(handler_call_details)
        logger.warning("rejected %s: %s", handler_call_details.method, problem)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED
        return _rejecting_handler(handler, problem)

    def check(self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """Return None when ``metadata`` authorizes a call of ``method``, else why not."""
        if method.startswith(self._open_prefixes):
            return None
        rule = self._rule_for(method)
        if rule is None:
            return f"no token grants access to {_service_name(method)}"
        prefix, accepted = rule
        token = _bearer_token(metadata)
        if token is None:
            return _MISSING_TOKEN_MSG
        if _matches(token, accepted):
            return None
        digests = self._digests.get(prefix)
        if digests and _matches(hashlib.sha256(token).digest(), digests):
            return None
        return f"invalid token for {_service_name(method)}" + self._hint(token, accepted)

    def _rule_for(self, method: str) -> tuple[str, frozenset[bytes]] | None:
        for prefix, tokens in self._rules:
            if method.startswith(prefix):
                return prefix, tokens
        return None

    def _hint(self, token: bytes, accepted: frozenset[bytes]) -> str:
        valid_for = [
            _service_name(prefix)
            for prefix, tokens in self._rules
            if tokens is not accepted and _matches(token, tokens)
        ]
        if any(name.rsplit(".", 1)[-1] == "Engine" for name in valid_for):
            return _ENGINE_TOKEN_HINT
        if valid_for:
            return f" (that token is only valid for {valid_for[0]})"
        return ""


def _encode_tokens(prefix: str, tokens: Iterable[str], *, warn: bool = True) -> frozenset[bytes]:
    encoded = frozenset(t.encode("utf-8") for t in tokens if t)
    if not encoded and warn:
        logger.warning("no usable token for %s: every call to it will be rejected", prefix)
    return encoded


def _rejecting_handler(
    handler: grpc.RpcMethodHandler[_TRequest, _TResponse], message: str
) -> grpc.RpcMethodHandler[_TRequest, _TResponse]:
    """A handler of the same kind as ``handler`` that aborts with UNAUTHENTICATED."""

    async def reject(_request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kind = (handler.request_streaming, handler.response_streaming)
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[kind]
    return factory(reject)
