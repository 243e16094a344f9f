"""The client's side of the data path: blobs straight to and from engines.

Engines may serve a data endpoint (`EngineData`, advertised as `EngineInfo.data_url`). A client
that reaches it moves a task's large arguments and results in one hop instead of through
the controller; one that cannot falls back to the controller for good. On a TLS cluster the
channels speak TLS, trusting the cluster's CA and presenting the connection file's client
certificate, as the channel to the controller does. Runs in the transport's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import grpc

from pxgrpc import blobstream, wire
from pxgrpc.security.credentials import channel_options

log = logging.getLogger(__name__)

#: Seconds to wait for an engine's data endpoint to accept a connection before using the
#: controller for that engine (a refused connection gives up at once).
CONNECT_TIMEOUT = 5.0


class DataPath:
    """Channels to the engines' data endpoints, connected as soon as the endpoints are known.

    `call_soon(callback, *args)` runs a callback in the event loop the channels live in (the
    transport's); with it, `set_urls` starts connecting to new endpoints at once, so that the
    first transfer does not also pay for the TCP (and TLS) handshake and HTTP/2 set-up.
    """

    def __init__(
        self,
        metadata: tuple[tuple[str, str], ...],
        credentials: grpc.ChannelCredentials | None = None,
        call_soon: Callable[..., object] | None = None,
    ) -> None:
        #: The call metadata (the client token) for the engines' endpoints.
        self.metadata = metadata
        self._credentials = credentials
        self._call_soon = call_soon
        self._urls: dict[int, str] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._broken: set[str] = set()
        self._enabled = blobstream.direct_data_enabled()

    def set_urls(self, urls: Mapping[int, str]) -> None:
        """The data endpoints of the live engines (engine id -> "host:port"), from an engine list;
        starts connecting to those not connected yet."""
        self._urls = dict(urls)
        if self._call_soon is not None and self._enabled:
            new = [u for u in self._urls.values() if u and u not in self._channels and u not in self._broken]
            if new:
                self._call_soon(self._connect, new)

    def _connect(self, urls: list[str]) -> None:
        """Open channels to `urls` and start connecting them (in the event loop; no waiting)."""
        for url in urls:
            if url not in self._broken:
                self.channel(url).get_state(try_to_connect=True)

    def connected(self, url: str) -> bool:
        """Whether the channel to `url` exists and is connected (READY)."""
        channel = self._channels.get(url)
        return channel is not None and channel.get_state() == grpc.ChannelConnectivity.READY

    async def reachable(self, url: str, timeout: float = CONNECT_TIMEOUT) -> bool:
        """Wait until the channel to `url` is connected: True; False when the connection is
        refused or not made within `timeout` seconds (packets dropped on the way)."""
        channel = self.channel(url)
        deadline = asyncio.get_running_loop().time() + timeout
        state = channel.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.READY:
            if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
                return False
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(channel.wait_for_state_change(state), max(0.0, remaining))
            except TimeoutError:
                return False
            state = channel.get_state(try_to_connect=True)
        return True

    def url_for(self, engine_id: int | None) -> str | None:
        """Where to reach an engine's data directly, or None (use the controller)."""
        if engine_id is None or not self._enabled:
            return None
        url = self._urls.get(engine_id)
        return url if url and url not in self._broken else None

    def give_up(self, url: str, why: str) -> None:
        """The endpoint failed us: use the controller for this engine from now on."""
        if url not in self._broken:
            log.warning("data endpoint %s unusable (%s): using the controller", url, why)
            self._broken.add(url)

    def channel(self, url: str) -> grpc.aio.Channel:
        """The channel to an engine's data endpoint (opened on first use, closed by `close`)."""
        channel = self._channels.get(url)
        if channel is None:
            # No TLS server name override: the engine's certificate names the host it is dialed at.
            options = channel_options(None)
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(url, options=options)
            else:
                channel = grpc.aio.secure_channel(url, self._credentials, options=options)
            self._channels[url] = channel
        return channel

    async def upload(self, url: str, blob: blobstream.OutgoingBlob, timeout: float | None = None) -> None:
        """Send a blob to an engine for a task about to be submitted (raises grpc.RpcError)."""
        upload = self.channel(url).stream_unary(
            f"/{wire.ENGINE_DATA_SERVICE}/Upload",
            request_serializer=None,
            response_deserializer=wire.pb.UploadReply.FromString,
        )
        await upload(blob.raw_messages(), metadata=self.metadata, timeout=timeout)

    async def download(
        self, url: str, blob_id: str, into: memoryview | None = None
    ) -> blobstream.IncomingBlob:
        """Fetch a result blob from an engine, into `into` when given and of the blob's size
        (raises grpc.RpcError or wire.DecodingError)."""
        download = self.channel(url).unary_stream(
            f"/{wire.ENGINE_DATA_SERVICE}/Download",
            request_serializer=wire.pb.DownloadRequest.SerializeToString,
            response_deserializer=None,
        )
        call = download(wire.pb.DownloadRequest(blob_id=blob_id), metadata=self.metadata)
        return await blobstream.receive(call, blob_id, into=into)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
