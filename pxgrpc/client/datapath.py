"""The client's side of the data path: blobs straight to and from engines.

Engines may serve a data endpoint (`EngineData`, advertised as `EngineInfo.data_url`). A client
that reaches it moves a task's large arguments and results in one hop instead of through
the controller; one that cannot falls back to the controller, and tries the endpoint again in
the background, after `retry_after()` seconds and then twice as long each time (at most
`RETRY_MAX`), until it answers. On a TLS cluster the
channels speak TLS, trusting the cluster's CA and presenting the connection file's client
certificate, as the channel to the controller does. Runs in the transport's event loop.

An engine on this client's host (its `EngineInfo.host_key` is this host's boot id) gets large
blobs as shared memory instead of bytes, both ways (`pxgrpc.sharedmem`): a push writes the blob
once into a fresh memfd that the engine maps during the upload, a pull hands the engine an empty
memfd to write the result into and maps it afterwards. When that fails for an engine (another
user or PID namespace: the engine cannot open the client's file), its blobs go as bytes from
then on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from pxgrpc import blobstream, lane, sharedmem, wire
from pxgrpc.security.credentials import channel_options
from pxgrpc.security.tokens import TOKEN_METADATA_KEY

log = logging.getLogger(__name__)

#: Seconds to wait for an engine's data endpoint to accept a connection before using the
#: controller for that engine (a refused connection gives up at once).
CONNECT_TIMEOUT = 5.0
#: Longest wait between two tries of an endpoint given up.
RETRY_MAX = 600.0


def retry_after() -> float:
    """Seconds before an endpoint given up is tried again (`PXGRPC_DATA_RETRY`, default 30)."""
    try:
        return max(0.1, float(os.environ.get("PXGRPC_DATA_RETRY", "30")))
    except ValueError:
        return 30.0


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
        #: The endpoints of engines on this host that share memory (and have not failed to).
        self._sharing: set[str] = set()
        self._here: set[int] = set()  # the engines on this host
        self._lanes: dict[int, str] = {}  # their task lanes
        self._not_sharing: set[str] = set()
        self._channels: dict[str, grpc.aio.Channel] = {}
        # The endpoints given up (tried again in the background), and how often each came back.
        self._broken: set[str] = set()
        self._revivals: dict[str, int] = {}
        self._retries: set[asyncio.Future[None]] = set()
        self._enabled = blobstream.direct_data_enabled()
        self._lanes_enabled = lane.enabled()

    def set_urls(
        self,
        urls: Mapping[int, str],
        host_keys: Mapping[int, str] | None = None,
        lane_paths: Mapping[int, str] | None = None,
    ) -> None:
        """The data endpoints of the live engines (engine id -> "host:port"), from an engine list,
        their hosts (engine id -> `EngineInfo.host_key`) and task lanes (`EngineInfo.lane_path`);
        starts connecting to those not connected yet."""
        self._urls = dict(urls)
        mine = sharedmem.host_key()
        self._here = {i for i, key in (host_keys or {}).items() if mine and key == mine}
        self._lanes = {i: p for i, p in (lane_paths or {}).items() if p and i in self._here}
        self._sharing = {self._urls[i] for i in self._here if self._urls.get(i)}
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

    @property
    def token(self) -> str:
        """The client token (what `metadata` carries)."""
        value = dict(self.metadata).get(TOKEN_METADATA_KEY, "")
        return value.partition(" ")[2]

    def lane_for(self, engine_id: int) -> str | None:
        """The engine's task lane, when it is on this host and has one (and lanes are on)."""
        path = self._lanes.get(engine_id)
        return path if path and self._lanes_enabled else None

    def on_this_host(self, engine_id: int | None) -> bool:
        """Whether an engine registered this client's host (whatever its data endpoint)."""
        return engine_id in self._here

    def shares_memory(self, url: str) -> bool:
        """Whether blobs to and from the engine at `url` may go as shared memory."""
        return url in self._sharing and url not in self._not_sharing and sharedmem.enabled()

    def _stop_sharing(self, url: str, why: str) -> None:
        log.warning("engine at %s cannot share memory with this client (%s): sending bytes", url, why)
        self._not_sharing.add(url)

    def give_up(self, url: str, why: str) -> None:
        """(In the event loop.) The endpoint failed us: use the controller for this engine until
        it answers again (it is tried in the background)."""
        if url in self._broken:
            return
        again = url in self._revivals
        log.log(
            logging.INFO if again else logging.WARNING,
            "data endpoint %s unusable (%s): using the controller, trying it again in %.0f s",
            url,
            why,
            retry_after(),
        )
        self._broken.add(url)
        retry = asyncio.ensure_future(self._retry(url))
        self._retries.add(retry)
        retry.add_done_callback(self._retries.discard)

    async def _retry(self, url: str) -> None:
        """Try a given-up endpoint now and then until it answers; then it is used again."""
        delay = retry_after()
        while True:
            await asyncio.sleep(delay)
            if await self.reachable(url):
                break
            delay = min(2 * delay, RETRY_MAX)
        self._broken.discard(url)
        self._revivals[url] = self._revivals.get(url, 0) + 1
        log.info("data endpoint %s answers again: engine data and tasks go to it again", url)

    def revivals(self, url: str) -> int:
        """How often the endpoint at `url` came back after being given up."""
        return self._revivals.get(url, 0)

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
        shared = blob.size >= sharedmem.MIN_POINT_TO_POINT and self.shares_memory(url)
        if shared and await self._upload_shared(upload, url, blob, timeout):
            return
        await upload(blob.raw_messages(), metadata=self.metadata, timeout=timeout)

    async def _upload_shared(
        self, upload: Any, url: str, blob: blobstream.OutgoingBlob, timeout: float | None
    ) -> bool:
        """Upload a blob as a memfd the engine maps; False when the bytes must go instead."""
        try:
            shared = await asyncio.to_thread(write_shared, blob)
        except OSError as exc:  # (e.g. no memory for the file)
            log.warning("no shared copy of blob %s (%s): sending bytes", blob.blob_id, exc)
            return False
        try:
            header = wire.pb.BlobHeader(blob_id=blob.blob_id, size=blob.size, shared=shared.describe())
            # The engine maps the file before it replies: the file may go then.
            message = wire.pb.BlobChunk(header=header).SerializeToString()
            await upload(iter([message]), metadata=self.metadata, timeout=timeout)
            return True
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            self._stop_sharing(url, str(exc.details()))
            return False
        finally:
            shared.close()

    async def download(
        self,
        url: str,
        blob_id: str,
        into: memoryview | None = None,
        region: tuple[sharedmem.SharedFile, int] | None = None,
    ) -> blobstream.IncomingBlob:
        """Fetch a result blob from an engine, into `into` when given and of the blob's size
        (raises grpc.RpcError or wire.DecodingError). With `region` (a shared file of ours, and
        a byte of it) an engine on this host writes the blob there: a `sharedmem.WrittenBlob`
        says so (else the bytes came)."""
        download = self.channel(url).unary_stream(
            f"/{wire.ENGINE_DATA_SERVICE}/Download",
            request_serializer=wire.pb.DownloadRequest.SerializeToString,
            response_deserializer=None,
        )
        request = wire.pb.DownloadRequest(blob_id=blob_id)
        if region is not None and self.shares_memory(url):
            request.host_key = sharedmem.host_key()
            request.into.CopyFrom(region[0].describe(region[1]))

            def in_region(blob_id: str, header: wire.pb.BlobHeader) -> blobstream.IncomingBlob:
                if header.shared != request.into:
                    raise wire.DecodingError(f"blob {blob_id}: BlobHeader.shared is not the file we gave")
                return sharedmem.WrittenBlob(blob_id, header.size)

            return await blobstream.receive(download(request, metadata=self.metadata), blob_id, in_region)
        target = None
        if self.shares_memory(url):
            try:
                target = sharedmem.SharedFile(0)  # for the engine to write the blob into
            except OSError as exc:  # (e.g. out of file descriptors)
                log.warning("no shared file for blob %s (%s): receiving bytes", blob_id, exc)
        if target is None:
            return await blobstream.receive(download(request, metadata=self.metadata), blob_id, into=into)
        try:
            request.host_key = sharedmem.host_key()
            request.into.CopyFrom(target.describe())

            def written(blob_id: str, header: wire.pb.BlobHeader) -> blobstream.IncomingBlob:
                if header.shared != request.into:
                    raise wire.DecodingError(f"blob {blob_id}: BlobHeader.shared is not the file we gave")
                if into is not None and into.nbytes == header.size:
                    target.read_into(into)
                    return sharedmem.FilledBlob(blob_id, into)
                return target.map(blob_id, header.size)

            call = download(request, metadata=self.metadata)
            try:
                return await blobstream.receive(call, blob_id, written, into=into)
            except sharedmem.SharedBlobUnusable as exc:
                raise wire.DecodingError(str(exc)) from None
        finally:
            target.close()

    async def close(self) -> None:
        for retry in list(self._retries):
            retry.cancel()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def write_shared(blob: blobstream.OutgoingBlob) -> sharedmem.SharedFile:
    """A fresh memfd holding the blob's bytes (the client's array may change once it is written)."""
    shared = sharedmem.SharedFile(blob.size)
    try:
        shared.write_chunks(blob.parts)
    except BaseException:
        shared.close()
        raise
    return shared
