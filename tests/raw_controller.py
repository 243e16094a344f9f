"""Calling the Controller service the way a client in another language does: plain gRPC, bytes in.

No pxgrpc client code is involved: requests are protobuf messages (or arbitrary bytes) sent
through a generic grpc channel with the token metadata, exactly as a Node or Go client would.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from pxgrpc import blobstream, wire
from pxgrpc.security.connection_file import read_connection_file
from pxgrpc.security.credentials import channel_credentials, channel_options
from pxgrpc.security.tokens import auth_metadata

SERVICE = f"/{wire.CONTROLLER_SERVICE}/"
UNARY = ("ListEngines", "Gather", "Abort", "Interrupt", "QueueStatus", "Shutdown")
SERVER_STREAMING = ("Execute", "Apply", "Push", "Pull", "Scatter", "Download")
REPLY_TYPES: dict[str, Any] = {
    "ListEngines": wire.pb.ListEnginesReply,
    "Gather": wire.pb.GatherReply,
    "Abort": wire.pb.AbortReply,
    "Interrupt": wire.pb.InterruptReply,
    "QueueStatus": wire.pb.QueueStatusReply,
    "Shutdown": wire.pb.ShutdownReply,
    "Upload": wire.pb.UploadReply,
    "Download": wire.pb.BlobChunk,
    "Session": wire.pb.SessionEvent,
}


@dataclass
class Outcome:
    """What one call gave back: its status, details, and replies parsed (when it had any)."""

    code: grpc.StatusCode
    details: str
    replies: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK

    def results(self) -> list[wire.pb.TaskResult]:
        return [e.result for e in self.replies if isinstance(e, wire.pb.TaskEvent) and e.HasField("result")]


def _raw(request: Message | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


class RawController:
    """A Controller-service caller built from a connection file only."""

    def __init__(self, connection_file: str | os.PathLike[str], token: str | None = None) -> None:
        info = read_connection_file(connection_file)  # type: ignore[arg-type]
        options = channel_options(info.tls_server_name)
        if info.uses_tls:
            creds = channel_credentials(info.tls_ca.encode() if info.tls_ca else None, info.client_cert())
            self.channel = grpc.secure_channel(info.url, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(info.url, options=options)
        self.info = info
        self.metadata = auth_metadata(info.token if token is None else token)

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request: Message | bytes, timeout: float = 30.0) -> Outcome:
        """One unary or server-streaming call; never raises for a gRPC error status."""
        path = SERVICE + method
        reply_type = REPLY_TYPES.get(method, wire.pb.TaskEvent)
        try:
            if method in SERVER_STREAMING:
                call = self.channel.unary_stream(path)(_raw(request), metadata=self.metadata, timeout=timeout)
                replies = [reply_type.FromString(raw) for raw in call]
            else:
                raw = self.channel.unary_unary(path)(_raw(request), metadata=self.metadata, timeout=timeout)
                replies = [reply_type.FromString(raw)]
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details() or "")
        return Outcome(grpc.StatusCode.OK, "", replies)

    def stream_in(self, method: str, messages: Iterable[Message | bytes], timeout: float = 30.0) -> Outcome:
        """A client-streaming (Upload) or bidi (Session) call sending `messages` in order."""
        path = SERVICE + method
        reply_type = REPLY_TYPES[method]
        raws: Iterator[bytes] = (_raw(m) for m in messages)
        try:
            if method == "Upload":
                replies = [
                    reply_type.FromString(
                        self.channel.stream_unary(path)(raws, metadata=self.metadata, timeout=timeout)
                    )
                ]
            else:
                call = self.channel.stream_stream(path)(raws, metadata=self.metadata, timeout=timeout)
                replies = [reply_type.FromString(raw) for raw in call]
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details() or "")
        return Outcome(grpc.StatusCode.OK, "", replies)

    # --- conveniences a real client would write -------------------------------------------------

    def upload(self, data: bytes, blob_id: str | None = None, chunk: int = 1 << 20) -> str:
        """Upload `data` as one blob; return its id."""
        blob_id = blob_id or blobstream.new_id()
        header = wire.pb.BlobChunk(header=wire.pb.BlobHeader(blob_id=blob_id, size=len(data)))
        chunks = [wire.pb.BlobChunk(data=data[i : i + chunk]) for i in range(0, len(data), chunk)]
        outcome = self.stream_in("Upload", [header, *chunks])
        assert outcome.ok, outcome
        return blob_id

    def download(self, blob_id: str) -> bytes:
        outcome = self.call("Download", wire.pb.DownloadRequest(blob_id=blob_id))
        assert outcome.ok, outcome
        assert outcome.replies[0].HasField("header")
        return b"".join(c.data for c in outcome.replies[1:])

    def blobs_of(self, results: Iterable[wire.pb.TaskResult]) -> wire.BlobMap:
        """Download every blob the results reference, as the decoder wants them."""
        blobs: wire.BlobMap = {}
        for result in results:
            for blob_id in result.blob_ids:
                data = self.download(blob_id)
                blob = blobstream.IncomingBlob(blob_id, len(data))
                blob.write(memoryview(data))
                blobs[blob_id] = blob
        return blobs
