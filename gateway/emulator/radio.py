"""A virtual radio shared across processes: emulated devices plus HCI-over-TCP controllers.

``edge emulate`` runs this: the emulated devices sit on an in-process ``LocalLink``, and each TCP
client (a gateway using ``tcp-client:HOST:PORT`` as its bumble transport) gets a fresh virtual
controller on that link, as if it had plugged in a USB dongle. When the client goes away (even by
``kill -9``) its controller is torn down and its peers see a normal disconnection, so they keep
what was not confirmed and advertise again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from bumble import hci, ll
from bumble.controller import Controller
from bumble.transport.common import PacketParser

from gateway.link.bumble_link import new_local_link

log = logging.getLogger(__name__)


class _SocketSink:
    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport: asyncio.Transport | None = transport

    def on_packet(self, packet: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(packet)


class _HostConnection(asyncio.Protocol):
    def __init__(self, radio: VirtualRadio) -> None:
        self.radio = radio
        self.controller: Controller | None = None
        self.sink: _SocketSink | None = None
        self.parser: PacketParser | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.sink = _SocketSink(transport)
        self.radio.host_count += 1
        self.controller = Controller(
            f"host-{self.radio.host_count}",
            host_sink=self.sink,
            link=self.radio.link,
            public_address=self.radio.host_address,
        )
        self.parser = PacketParser(self.controller)

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sink is not None:
            self.sink.transport = None
        if self.controller is not None:
            self.radio.drop_controller(self.controller)
            self.controller = None


class VirtualRadio:
    """Owns the ``LocalLink`` and serves gateway hosts on ``host:port`` (HCI H4 over TCP)."""

    def __init__(self, *, host_address: str = "F0:ED:6E:00:00:01") -> None:
        self.link = new_local_link()
        self.host_address = host_address
        self.host_count = 0
        self._server: asyncio.Server | None = None

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _HostConnection(self), host, port)
        sockets: Any = self._server.sockets
        return int(sockets[0].getsockname()[1])

    def drop_controller(self, controller: Controller) -> None:
        """Tell every peer the link is gone, then unplug the controller."""
        for connection in list(controller.le_connections.values()):
            with contextlib.suppress(Exception):
                connection.send_ll_control_pdu(
                    ll.TerminateInd(hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR)
                )
        controller.le_connections.clear()
        self.link.remove_controller(controller)
        log.info("gateway host disconnected from the virtual radio")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
