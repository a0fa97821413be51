"""MQTT over WebSocket (§6), seen from a bare WebSocket client (wsproto over a TCP socket) so that frames can be
shaped by hand: the broker selects the "mqtt" subprotocol, reads MQTT packets however they are split across binary
frames, and closes on a text frame. Everything else over ws:// is the same client as over mqtt:// (test_tls_matrix
runs the basic flows there)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection, BytesMessage, CloseConnection, Message, Ping, RejectConnection, Request, TextMessage,
)

from harness.core.codec import Decoder, encode
from harness.core.packets import Connack, Connect, Pingreq, Pingresp, Publish, Suback, Subscribe, Subscription
from harness.expect import expect_nothing
from harness.url import parse_url

pytestmark = pytest.mark.requires(ws=True)


class RawWebSocket:
    """One WebSocket connection whose frames the test writes itself; decoded MQTT packets collect in `packets`."""

    def __init__(self, reader, writer, version: int, subprotocol: str | None):
        self.reader, self.writer = reader, writer
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.decoder = Decoder(version)
        self.packets: list = []
        self.subprotocol = subprotocol
        self.closed = False
        self.text_frames: list[str] = []
        self.login: dict = {}  # username/password for the CONNECT the test builds

    @classmethod
    async def open(cls, url: str, version: int, subprotocols=("mqtt",), timeout: float = 5.0) -> "RawWebSocket":
        u = parse_url(url)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(u.host, u.port), timeout)
        self = cls(reader, writer, version, None)
        writer.write(self.ws.send(Request(host=u.address, target=u.path or "/", subprotocols=list(subprotocols))))
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            assert data, "the broker closed the connection during the WebSocket upgrade"
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.subprotocol = event.subprotocol
                    return self
                assert not isinstance(event, RejectConnection), f"upgrade refused: HTTP {event.status_code}"

    def send_frame(self, data: bytes) -> None:
        self.writer.write(self.ws.send(Message(data=data)))  # bytes: one binary frame

    def send_text_frame(self, text: str) -> None:
        self.writer.write(self.ws.send(Message(data=text)))

    async def until(self, done, timeout: float = 5.0) -> None:
        """Read frames until done(self) is true or the connection closes; fails on the timeout."""
        async with asyncio.timeout(timeout):
            while not done(self) and not self.closed:
                data = await self.reader.read(65536)
                self.ws.receive_data(data or None)
                if not data:
                    self.closed = True
                for event in self.ws.events():
                    if isinstance(event, BytesMessage):
                        self.packets += self.decoder.feed(bytes(event.data))
                    elif isinstance(event, TextMessage):
                        self.text_frames.append(event.data)
                    elif isinstance(event, Ping):
                        self.writer.write(self.ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        self.closed = True

    def has(self, kind, **fields) -> bool:
        return any(isinstance(p, kind) and all(getattr(p, k) == v for k, v in fields.items()) for p in self.packets)

@pytest.fixture
def raw_ws(broker, mqtt_version):
    """`async with raw_ws() as ws`: a RawWebSocket to the broker's ws listener, closed on the way out."""
    @contextlib.asynccontextmanager
    async def open_(**kwargs):
        ws = await RawWebSocket.open(broker.url("ws"), 5 if mqtt_version == "5" else 4, **kwargs)
        ws.login = broker.login  # what the broker's clients need (e.g. ejabberd's user name and password)
        try:
            yield ws
        finally:
            ws.writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await ws.writer.wait_closed()
    return open_


def connect_bytes(ws: RawWebSocket, client_id: str) -> bytes:
    return encode(Connect(client_id=client_id, protocol_level=ws.decoder.version, **ws.login), ws.decoder.version)


@pytest.mark.spec("MQTT-6.0.0-4")
async def test_broker_selects_the_mqtt_subprotocol(raw_ws):
    async with raw_ws() as ws:
        assert ws.subprotocol == "mqtt", f"Sec-WebSocket-Protocol in the 101 answer: {ws.subprotocol!r}"


@pytest.mark.spec("MQTT-6.0.0-2")
async def test_packets_split_across_frames_and_packed_into_one_are_read(raw_ws, topic):
    async with raw_ws() as ws:
        version = ws.decoder.version
        connect = connect_bytes(ws, "mh-ws-" + topic.strip("/").replace("/", "-"))
        ws.send_frame(connect[:3])  # one CONNECT over three frames, cut mid-header and mid-field
        ws.send_frame(connect[3:9])
        ws.send_frame(connect[9:])
        await ws.until(lambda w: w.has(Connack))
        assert ws.has(Connack, reason_code=0), ws.packets
        # SUBSCRIBE, a PUBLISH to it and a PINGREQ in one frame, the last one cut short and completed in the next.
        batch = (encode(Subscribe(1, [Subscription(topic + "a", 0)]), version)
                 + encode(Publish(topic + "a", b"packed"), version) + encode(Pingreq(), version))
        ws.send_frame(batch[:-1])
        ws.send_frame(batch[-1:])
        # Each packet's answer, in whatever order the broker sends them (it may answer PINGREQ before SUBACK).
        await ws.until(lambda w: w.has(Pingresp) and w.has(Suback) and w.has(Publish))
        assert ws.has(Suback, packet_id=1), ws.packets
        assert ws.has(Publish, topic=topic + "a", payload=b"packed"), ws.packets
        assert not ws.closed


@pytest.mark.spec("MQTT-6.0.0-1")
async def test_broker_closes_on_mqtt_data_in_a_text_frame(raw_ws, client_factory, topic):
    """A QoS 0 PUBLISH whose bytes are all ASCII (so the text frame is valid UTF-8) sent as a text frame: the broker
    closes the connection and delivers nothing."""
    watcher = await client_factory(name="watcher")
    await watcher.subscribe(topic + "a", qos=0)
    async with raw_ws() as ws:
        version = ws.decoder.version
        ws.send_frame(connect_bytes(ws, "mh-ws-text-" + topic.strip("/").replace("/", "-")))
        await ws.until(lambda w: w.has(Connack))
        publish = encode(Publish(topic + "a", b"as text"), version)
        assert publish.isascii(), publish
        ws.send_text_frame(publish.decode("ascii"))
        ws.send_frame(encode(Pingreq(), version))  # answered only if the text frame was taken for MQTT data
        await ws.until(lambda w: w.has(Pingresp))
        await expect_nothing(watcher)
        assert ws.closed and not ws.has(Pingresp), f"the broker went on after a text frame: {ws.packets}"
