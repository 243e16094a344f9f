"""Tests for pxgrpc.security (connection files, tokens, credentials, token checks) and pxgrpc.addresses."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import stat
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from pxgrpc.addresses import is_loopback, join_url, split_url
from pxgrpc.security import certs
from pxgrpc.security.certs import CertKey
from pxgrpc.security.connection_file import (
    ENV_CONNECTION_FILE,
    ENV_DIR,
    ConnectionInfo,
    default_connection_file,
    pxgrpc_dir,
    read_connection_file,
    write_connection_file,
)
from pxgrpc.security.credentials import (
    channel_credentials,
    channel_options,
    server_credentials,
    server_options,
)
from pxgrpc.security.errors import SecurityError
from pxgrpc.security.interceptor import _MISSING_TOKEN_MSG, TokenAuthInterceptor
from pxgrpc.security.tokens import auth_metadata, new_token

pytestmark = pytest.mark.timeout(30)

CLIENT_TOKEN = new_token()
ENGINE_TOKEN = new_token()
CTRL = "/pxgrpc.test.Controller/"
ENGINE = "/pxgrpc.test.Engine/"
OPEN = "/pxgrpc.test.Open/"
CALL_TIMEOUT = 10.0


def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _info() -> ConnectionInfo:
    return ConnectionInfo(
        url="127.0.0.1:50051",
        token=CLIENT_TOKEN,
        engine_token=ENGINE_TOKEN,
        tls_ca="-----BEGIN CERTIFICATE-----\n...\n",
        tls_server_name="localhost",
        cluster_id="abc",
        controller_pid=1234,
    )


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "pxdir"))
    monkeypatch.delenv(ENV_CONNECTION_FILE, raising=False)


# --------------------------------------------------------------------------- tokens and paths


def test_new_token_is_random_and_long() -> None:
    tokens = {new_token() for _ in range(10)}
    assert len(tokens) == 10
    assert all(len(t) >= 43 for t in tokens)


def test_new_token_never_looks_like_a_command_line_option() -> None:
    # 1 in 64 URL-safe tokens would start with '-', and `--token -abc` fails in argparse.
    assert not any(new_token().startswith("-") for _ in range(2000))


def test_default_paths(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pxgrpc_dir() == tmp_path / "pxdir"
    assert default_connection_file() == tmp_path / "pxdir" / "controller.json"
    assert default_connection_file("x1") == tmp_path / "pxdir" / "controller-x1.json"
    monkeypatch.setenv(ENV_CONNECTION_FILE, str(tmp_path / "c.json"))
    assert default_connection_file() == tmp_path / "c.json"
    assert default_connection_file("x1") == tmp_path / "pxdir" / "controller-x1.json"
    monkeypatch.delenv(ENV_DIR)
    assert pxgrpc_dir() == pathlib.Path.home() / ".pxgrpc"


# --------------------------------------------------------------------------- connection file


def test_connection_file_round_trip_and_modes() -> None:
    path = default_connection_file()
    write_connection_file(path, _info())
    assert read_connection_file() == _info()
    assert read_connection_file(path) == _info()
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["controller.json"]


def test_write_creates_nested_dirs_private(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a" / "b" / "conn.json"
    write_connection_file(path, _info())
    assert _mode(tmp_path / "a") == 0o700
    assert _mode(tmp_path / "a" / "b") == 0o700


def test_write_tightens_existing_pxgrpc_dir() -> None:
    base = pxgrpc_dir()
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)
    path = default_connection_file()
    write_connection_file(path, _info())
    assert _mode(base) == 0o700
    write_connection_file(path, _info())  # overwrite atomically
    assert _mode(path) == 0o600


def test_write_leaves_unrelated_existing_dir_alone(tmp_path: pathlib.Path) -> None:
    other = tmp_path / "shared"
    other.mkdir()
    os.chmod(other, 0o755)
    write_connection_file(other / "c.json", _info())
    assert _mode(other) == 0o755
    assert _mode(other / "c.json") == 0o600


def test_group_readable_file_is_refused() -> None:
    path = default_connection_file()
    write_connection_file(path, _info())
    os.chmod(path, 0o644)
    with pytest.raises(SecurityError, match=r"chmod 600") as err:
        read_connection_file(path)
    assert str(path) in str(err.value)
    assert "token" in str(err.value)


def test_missing_file_message(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(SecurityError) as err:
        read_connection_file(path)
    message = str(err.value)
    assert f"no controller found at {path}" in message
    assert "pxgrpc cluster start -n 4" in message
    assert "pxgrpc-controller" in message


def test_from_json_ignores_unknown_and_names_missing_key(tmp_path: pathlib.Path) -> None:
    text = '{"url": "h:1", "token": "t", "engine_token": "e", "future_key": 1}'
    assert ConnectionInfo.from_json(text) == ConnectionInfo("h:1", "t", "e")
    path = tmp_path / "bad.json"
    path.write_text('{"url": "h:1", "token": "t"}')
    os.chmod(path, 0o600)
    with pytest.raises(SecurityError, match="engine_token") as err:
        read_connection_file(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"url": 1, "token": "t", "engine_token": "e"}'])
def test_from_json_rejects_bad_content(text: str) -> None:
    with pytest.raises(SecurityError, match="connection file"):
        ConnectionInfo.from_json(text)


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::ffff:127.0.0.1", True),
        ("unix:/tmp/px.sock", True),
        ("", False),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.org", False),
        ("localhost.example.org", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("example.org:1", ("example.org", 1)),
        ("[::1]:50051", ("::1", 50051)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("unix:/tmp/px.sock", ("unix:/tmp/px.sock", 0)),
    ],
)
def test_split_url(url: str, expected: tuple[str, int]) -> None:
    assert split_url(url) == expected
    if not url.startswith("unix:"):
        assert join_url(*expected) == url


@pytest.mark.parametrize("url", ["noport", "host:", "host:x", "host:70000", "::1:5", "[::1]5"])
def test_split_url_rejects_bad(url: str) -> None:
    with pytest.raises(ValueError, match="bad address"):
        split_url(url)


# --------------------------------------------------------------------------- TLS material


@pytest.fixture(scope="module")
def ca() -> CertKey:
    return certs.make_ca()


@pytest.fixture(scope="module")
def server_cert(ca: CertKey) -> CertKey:
    return certs.make_server_cert(ca, ["127.0.0.1"])


def test_mutual_tls_needs_client_ca(server_cert: CertKey) -> None:
    with pytest.raises(SecurityError, match="client_ca_pem"):
        server_credentials(server_cert, require_client_auth=True)


def test_channel_options() -> None:
    options = dict(channel_options("ctrl.example"))
    assert options["grpc.ssl_target_name_override"] == "ctrl.example"
    assert options["grpc.max_receive_message_length"] == 64 * 1024 * 1024
    assert options["grpc.keepalive_time_ms"] == 10000
    assert "grpc.ssl_target_name_override" not in dict(channel_options(None))


def test_auth_metadata() -> None:
    assert auth_metadata("t0k") == (("authorization", "bearer t0k"),)


# --------------------------------------------------------------------------- interceptor, unit


def _interceptor() -> TokenAuthInterceptor:
    return TokenAuthInterceptor(
        {CTRL: {CLIENT_TOKEN}, ENGINE: {ENGINE_TOKEN, CLIENT_TOKEN}}, open_prefixes=(OPEN,)
    )


def test_check_rules() -> None:
    check = _interceptor().check
    ok = auth_metadata(CLIENT_TOKEN)
    assert check(CTRL + "Echo", ok) is None
    assert check(ENGINE + "Echo", auth_metadata(ENGINE_TOKEN)) is None
    assert check(OPEN + "Echo", None) is None
    assert check(CTRL + "Echo", ()) == _MISSING_TOKEN_MSG
    assert check(CTRL + "Echo", (("authorization", "bearer "),)) == _MISSING_TOKEN_MSG
    assert check(CTRL + "Echo", (("authorization", f"Basic {CLIENT_TOKEN}"),)) is not None
    assert check(CTRL + "Echo", (("authorization", f"Bearer {CLIENT_TOKEN}"),)) is None
    assert "no token grants" in str(check("/other.Service/X", ok))
    wrong = check(CTRL + "Echo", auth_metadata("nope"))
    assert wrong == "invalid token for pxgrpc.test.Controller"


def test_engine_token_hint() -> None:
    message = _interceptor().check(CTRL + "Echo", auth_metadata(ENGINE_TOKEN))
    assert message == (
        "invalid token for pxgrpc.test.Controller (an engine token cannot be used as a client token)"
    )


def test_empty_tokens_never_match() -> None:
    interceptor = TokenAuthInterceptor({CTRL: {""}})
    assert interceptor.check(CTRL + "Echo", (("authorization", "bearer "),)) is not None


def test_a_token_digest_admits_that_token_only() -> None:
    digest = hashlib.sha256(CLIENT_TOKEN.encode()).digest()
    interceptor = TokenAuthInterceptor({ENGINE: {ENGINE_TOKEN}}, token_sha256={CTRL: {digest}})
    assert interceptor.check(CTRL + "Echo", auth_metadata(CLIENT_TOKEN)) is None
    assert interceptor.check(CTRL + "Echo", (("authorization", f"bearer {digest.hex()}"),)) is not None
    message = interceptor.check(CTRL + "Echo", auth_metadata(ENGINE_TOKEN))
    assert message is not None and message.startswith("invalid token")
    later = TokenAuthInterceptor({CTRL: {""}}, token_sha256={CTRL: set()})
    assert later.check(CTRL + "Echo", auth_metadata(CLIENT_TOKEN)) is not None
    later.accept_token_sha256(CTRL, digest)
    assert later.check(CTRL + "Echo", auth_metadata(CLIENT_TOKEN)) is None
    assert later.check(ENGINE + "Echo", auth_metadata(CLIENT_TOKEN)) is not None
    with pytest.raises(ValueError, match="no rule"):
        later.accept_token_sha256(ENGINE, digest)


# --------------------------------------------------------------------------- interceptor, real grpc


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _count(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
    for i in range(3):
        yield request + str(i).encode()


async def _sum(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return b"".join([r async for r in requests])


async def _chat(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    async for r in requests:
        yield r


def _generic_handlers() -> list[grpc.GenericRpcHandler]:
    methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "Count": grpc.unary_stream_rpc_method_handler(_count),
        "Sum": grpc.stream_unary_rpc_method_handler(_sum),
        "Chat": grpc.stream_stream_rpc_method_handler(_chat),
    }
    services = ["pxgrpc.test.Controller", "pxgrpc.test.Engine", "pxgrpc.test.Open", "other.Service"]
    return [grpc.method_handlers_generic_handler(name, methods) for name in services]


async def _start_server(creds: grpc.ServerCredentials) -> tuple[grpc.aio.Server, str]:
    rules = {CTRL: {CLIENT_TOKEN}, ENGINE: {ENGINE_TOKEN}}
    interceptor = TokenAuthInterceptor(rules, open_prefixes=(OPEN,))
    server = grpc.aio.server(interceptors=[interceptor], options=server_options())
    server.add_generic_rpc_handlers(_generic_handlers())
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    return server, f"127.0.0.1:{port}"


Scenario = Callable[[grpc.aio.Channel], Awaitable[None]]


async def _run(
    server_creds: grpc.ServerCredentials,
    channel_creds: grpc.ChannelCredentials,
    scenario: Scenario,
) -> None:
    server, target = await _start_server(server_creds)
    try:
        options = channel_options(None)
        async with grpc.aio.secure_channel(target, channel_creds, options=options) as channel:
            await scenario(channel)
    finally:
        await server.stop(None)


def _run_sync(
    server_creds: grpc.ServerCredentials, channel_creds: grpc.ChannelCredentials, scenario: Scenario
) -> None:
    asyncio.run(_run(server_creds, channel_creds, scenario))


async def _unary(channel: grpc.aio.Channel, method: str, token: str | None) -> bytes:
    metadata = auth_metadata(token) if token is not None else None
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    result: bytes = await call(b"hi", metadata=metadata, timeout=CALL_TIMEOUT)
    return result


async def _rpc_error(awaitable: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await awaitable
    return err.value


def _metadata(token: str) -> tuple[tuple[str, str], ...]:
    return auth_metadata(token)


def test_real_server_token_checks(ca: CertKey, server_cert: CertKey) -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        assert await _unary(channel, CTRL + "Echo", CLIENT_TOKEN) == b"hi"
        assert await _unary(channel, ENGINE + "Echo", ENGINE_TOKEN) == b"hi"
        assert await _unary(channel, OPEN + "Echo", None) == b"hi"
        missing = await _rpc_error(_unary(channel, CTRL + "Echo", None))
        assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
        assert missing.details() == _MISSING_TOKEN_MSG
        wrong = await _rpc_error(_unary(channel, CTRL + "Echo", "wrong"))
        assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
        assert wrong.details() == "invalid token for pxgrpc.test.Controller"
        engine = await _rpc_error(_unary(channel, CTRL + "Echo", ENGINE_TOKEN))
        assert engine.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "engine token" in str(engine.details())
        unruled = await _rpc_error(_unary(channel, "/other.Service/Echo", CLIENT_TOKEN))
        assert unruled.code() == grpc.StatusCode.UNAUTHENTICATED
        unknown = await _rpc_error(_unary(channel, CTRL + "NoSuchMethod", "wrong"))
        assert unknown.code() == grpc.StatusCode.UNIMPLEMENTED

    creds = channel_credentials(ca.cert_pem)
    _run_sync(server_credentials(server_cert), creds, scenario)


async def _collect(call: AsyncIterable[Any]) -> list[bytes]:
    return [item async for item in call]


def _requests() -> Iterator[bytes]:
    return iter([b"a", b"b"])


def test_real_server_streaming_arities(ca: CertKey, server_cert: CertKey) -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        ok, bad = _metadata(CLIENT_TOKEN), _metadata("wrong")
        count: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(CTRL + "Count")
        total: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(CTRL + "Sum")
        chat: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(CTRL + "Chat")
        assert await _collect(count(b"x", metadata=ok, timeout=CALL_TIMEOUT)) == [b"x0", b"x1", b"x2"]
        assert await total(_requests(), metadata=ok, timeout=CALL_TIMEOUT) == b"ab"
        assert await _collect(chat(_requests(), metadata=ok, timeout=CALL_TIMEOUT)) == [b"a", b"b"]
        rejected: list[Awaitable[Any]] = [
            _collect(count(b"x", metadata=bad, timeout=CALL_TIMEOUT)),
            total(_requests(), metadata=bad, timeout=CALL_TIMEOUT),
            _collect(chat(_requests(), metadata=bad, timeout=CALL_TIMEOUT)),
        ]
        for awaitable in rejected:
            err = await _rpc_error(awaitable)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert err.details() == "invalid token for pxgrpc.test.Controller"

    creds = channel_credentials(ca.cert_pem)
    _run_sync(server_credentials(server_cert), creds, scenario)


def _mtls_server_creds(ca: CertKey, server_cert: CertKey) -> grpc.ServerCredentials:
    return server_credentials(server_cert, client_ca_pem=ca.cert_pem, require_client_auth=True)


def test_mutual_tls_with_client_cert(ca: CertKey, server_cert: CertKey) -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        assert await _unary(channel, CTRL + "Echo", CLIENT_TOKEN) == b"hi"

    client = certs.make_client_cert(ca, "engine-1")
    creds = channel_credentials(ca.cert_pem, client)
    _run_sync(_mtls_server_creds(ca, server_cert), creds, scenario)


def test_mutual_tls_without_client_cert_fails(ca: CertKey, server_cert: CertKey) -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        err = await _rpc_error(_unary(channel, CTRL + "Echo", CLIENT_TOKEN))
        assert err.code() == grpc.StatusCode.UNAVAILABLE

    creds = channel_credentials(ca.cert_pem)
    _run_sync(_mtls_server_creds(ca, server_cert), creds, scenario)


def test_mutual_tls_client_cert_from_other_ca_fails(ca: CertKey, server_cert: CertKey) -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        err = await _rpc_error(_unary(channel, CTRL + "Echo", CLIENT_TOKEN))
        assert err.code() == grpc.StatusCode.UNAVAILABLE

    stranger = certs.make_client_cert(certs.make_ca("other CA"), "mallory")
    creds = channel_credentials(ca.cert_pem, stranger)
    _run_sync(_mtls_server_creds(ca, server_cert), creds, scenario)


def test_client_trusting_other_ca_fails(server_cert: CertKey) -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        err = await _rpc_error(_unary(channel, CTRL + "Echo", CLIENT_TOKEN))
        assert err.code() == grpc.StatusCode.UNAVAILABLE

    creds = channel_credentials(certs.make_ca("other CA").cert_pem)
    _run_sync(server_credentials(server_cert), creds, scenario)


async def _call_with_server_name(ca: CertKey, server: CertKey, name: str) -> bytes:
    grpc_server, target = await _start_server(server_credentials(server))
    try:
        options = channel_options(name)
        creds = channel_credentials(ca.cert_pem)
        async with grpc.aio.secure_channel(target, creds, options=options) as channel:
            return await _unary(channel, CTRL + "Echo", CLIENT_TOKEN)
    finally:
        await grpc_server.stop(None)


def test_server_name_override(ca: CertKey) -> None:
    named = certs.make_server_cert(ca, ["ctrl.internal.example"])
    assert asyncio.run(_call_with_server_name(ca, named, "ctrl.internal.example")) == b"hi"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(_call_with_server_name(ca, named, "not-in-cert.example"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
