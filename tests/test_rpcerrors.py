"""gRPC failures become pxgrpc errors that name the peer that failed: the controller (with a
hint to check it runs) or an engine's data endpoint. Real calls to a closed port."""

from __future__ import annotations

import socket

import grpc
import pytest

from pxgrpc.client.errors import PxConnectionError
from pxgrpc.client.rpcerrors import ENGINE, map_rpc_errors


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _call_closed(url: str) -> None:
    with grpc.insecure_channel(url) as channel:
        echo = channel.unary_unary("/pxgrpc.v1.EngineData/Echo")
        echo(b"", timeout=5)


def test_a_failed_call_to_an_engine_names_its_data_endpoint_not_the_controller() -> None:
    url = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(PxConnectionError) as err, map_rpc_errors(url, ENGINE):
        _call_closed(url)
    message = str(err.value)
    assert message.startswith(f"cannot reach the engine's data endpoint at {url}: ")
    assert "controller" not in message


def test_a_failed_call_to_the_controller_says_what_to_check() -> None:
    url = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(PxConnectionError) as err, map_rpc_errors(url):
        _call_closed(url)
    assert f"cannot reach the controller at {url}: " in str(err.value)
    assert "pxgrpc cluster status" in str(err.value)
