"""Standard gRPC health checking and server reflection on the controller, called for real."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pxgrpc import wire
from pxgrpc.security.connection_file import read_connection_file
from pxgrpc.security.tokens import auth_metadata

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _channel(url: str) -> grpc.Channel:
    return grpc.insecure_channel(url)


def _check(url: str, service: str = "", token: str | None = None) -> Any:
    metadata = auth_metadata(token) if token else None
    with _channel(url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(
            health_pb2.HealthCheckRequest(service=service), metadata=metadata, timeout=10
        ).status


def _reflect(url: str, request: reflection_pb2.ServerReflectionRequest, token: str | None) -> Any:
    metadata = auth_metadata(token) if token else None
    with _channel(url) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        return next(iter(stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=10)))


def _code(fn: Any, *args: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)
    return info.value.code()  # type: ignore[no-any-return]


def test_health_answers_without_a_token_on_loopback(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster, _ = make_cluster(n=1)
    info = read_connection_file(cluster.connection_file)
    assert _check(info.url) == SERVING
    assert _check(info.url, wire.CONTROLLER_SERVICE) == SERVING
    assert _check(info.url, wire.ENGINE_SERVICE) == SERVING
    assert _code(_check, info.url, "no.such.Service") == grpc.StatusCode.NOT_FOUND


def test_reflection_needs_the_client_token_and_describes_the_api(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster, _ = make_cluster(n=1)
    info = read_connection_file(cluster.connection_file)
    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    assert _code(_reflect, info.url, listing, None) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(_reflect, info.url, listing, info.engine_token) == grpc.StatusCode.UNAUTHENTICATED

    services = {s.name for s in _reflect(info.url, listing, info.token).list_services_response.service}
    assert {wire.CONTROLLER_SERVICE, "grpc.health.v1.Health"} <= services

    # A tool can rebuild the Controller service from what reflection returns.
    by_symbol = reflection_pb2.ServerReflectionRequest(file_containing_symbol=wire.CONTROLLER_SERVICE)
    reply = _reflect(info.url, by_symbol, info.token)
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(f)
        for f in reply.file_descriptor_response.file_descriptor_proto
    ]
    controller = next(f for f in files if f.name == "pxgrpc/v1/controller.proto")
    methods = {m.name for s in controller.service for m in s.method}
    assert {"ListEngines", "Execute", "Push", "Pull", "Scatter", "Gather", "Upload", "Download"} <= methods
    assert "pxgrpc/v1/value.proto" in controller.dependency


def test_health_needs_a_token_off_loopback(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster, _ = make_cluster(
        n=1, controller_args=["--ip", "0.0.0.0", "--insecure", "--location", "127.0.0.1"]
    )
    info = read_connection_file(cluster.connection_file)
    assert _code(_check, info.url) == grpc.StatusCode.UNAUTHENTICATED
    assert _check(info.url, "", info.token) == SERVING
    assert _check(info.url, "", info.engine_token) == SERVING
    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    assert _code(_reflect, info.url, listing, info.engine_token) == grpc.StatusCode.UNAUTHENTICATED


def test_health_watchers_see_not_serving_when_the_controller_stops(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster, rc = make_cluster(n=1)
    info = read_connection_file(cluster.connection_file)
    seen: list[int] = []
    first = threading.Event()

    def watch() -> None:
        with _channel(info.url) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                for reply in stub.Watch(
                    health_pb2.HealthCheckRequest(service=wire.CONTROLLER_SERVICE), timeout=30
                ):
                    seen.append(reply.status)
                    first.set()
            except grpc.RpcError:
                pass  # the server went away after saying NOT_SERVING
            finally:
                first.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert first.wait(10)
    rc.shutdown(hub=True)
    watcher.join(30)
    assert seen[0] == SERVING and NOT_SERVING in seen
