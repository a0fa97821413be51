"""Sans-IO emulation of Espressif's esp-mqtt client (v1.1.0, mqtt_client.c), one esp_mqtt_client_handle_t.

The API calls mirror esp_mqtt_client_*(); each takes `now` (milliseconds, monotonic) and returns what the C
call returns. The driver feeds transport results in (transport_connected/failed/closed, received) and calls
tick(now) at next_deadline(). Everything the client wants done comes out of take_outputs(): Open/Send/Close
for the transport, Event for the event handler, LogLine for the ESP-IDF log.

Where esp-mqtt and a correct MQTT client differ, the default is the correct client (esp32.md §4), and
harness/device/virtual/bugs.py names the esp-mqtt behaviour to switch on:
- CONNACK session_present=0: in-flight outbox items are dropped with MQTT_EVENT_DELETED each (esp-mqtt replays
  them: bug `clean-replay`); QUEUED items, never sent, go out as new messages.
- session_present=1: every in-flight item is resent right after CONNACK (PUBLISH with DUP, PUBREL for those
  that got PUBREC), then the retransmit timer runs as in esp-mqtt.
- an inbound QoS 2 message is delivered once until its PUBREL (esp-mqtt delivers every copy: `qos2-twice`).
- all QUEUED items are sent at once when connected (esp-mqtt sends one per task loop, i.e. per poll wakeup).
- a v5 PUBREC with an error reason ends the flow (esp-mqtt still sends PUBREL).
"""

from __future__ import annotations

import random
import urllib.parse
from dataclasses import dataclass, field, replace
from itertools import count
from typing import Iterator

from harness.core.codec import Decoder, encode
from harness.core.packets import (
    MQTT_3_1, MQTT_3_1_1, MQTT_5, Connack, Connect, Disconnect, Pingreq, Pingresp, Puback, Pubcomp, Publish,
    Pubrec, Pubrel, Suback, Subscribe, Subscription, Unsuback, Unsubscribe, Will,
)
from harness.core.reason_codes import reason_name
from harness.device import esp_codes
from harness.device.virtual import transport as T
from harness.device.virtual.config import UserConfig
from harness.errors import ProtocolError

QUEUED, TRANSMITTED, ACKNOWLEDGED = "QUEUED", "TRANSMITTED", "ACKNOWLEDGED"
OUTBOX_EXPIRED_TIMEOUT_MS = 30_000  # CONFIG_MQTT_OUTBOX_EXPIRED_TIMEOUT_MS default
MQTT_RECON_DEFAULT_MS = 10_000
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}
LEVELS = {"3.1": MQTT_3_1, "3.1.1": MQTT_3_1_1, "5": MQTT_5}
_REFUSED_TEXT = {1: "bad protocol", 3: "server unavailable", 4: "bad username or password", 5: "not authorized"}


# ---- outputs

@dataclass(frozen=True, slots=True)
class Open:
    """Connect a transport: TCP to address:port, then TLS with `tls` when it is not None. `host` is the name
    the URI gave (TLS hostname check, SNI). Report back within timeout_ms."""

    conn: int
    address: str
    port: int
    host: str
    tls: T.TlsSettings | None
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class Send:
    conn: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    conn: int


@dataclass(slots=True)
class Event:
    """One esp_mqtt_event_t. `topic` and `data` are bytes; error_handle a dict (esp_codes.error_handle)."""

    name: str
    now: int
    protocol_ver: str
    msg_id: int = 0
    session_present: bool = False
    topic: bytes | None = None
    data: bytes = b""
    total_data_len: int = 0
    current_data_offset: int = 0
    qos: int = 0
    retain: bool = False
    dup: bool = False
    error_handle: dict | None = None
    property: dict | None = None


@dataclass(frozen=True, slots=True)
class LogLine:
    level: str  # E W I D V
    tag: str
    message: str
    now: int


# ---- state

@dataclass(slots=True)
class Settings:
    """The client's stored configuration (mqtt_config_storage_t + connect info)."""

    scheme: str | None = None
    host: str | None = None
    port: int = 0
    path: str | None = None
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    will_topic: str | None = None
    will_msg: bytes = b""
    will_qos: int = 0
    will_retain: bool = False
    clean_session: bool = True
    keepalive: int = 120
    protocol: str = "3.1.1"
    network_timeout_ms: int = 10_000
    refresh_connection_after_ms: int = 0
    auto_reconnect: bool = True
    reconnect_timeout_ms: int = MQTT_RECON_DEFAULT_MS
    retransmit_ms: int = 1000
    buffer_size: int = 1024
    out_size: int = 1024
    outbox_limit: int = 0
    tls: T.TlsSettings = field(default_factory=T.TlsSettings)


@dataclass(slots=True)
class Item:
    """One outbox entry. The packet is kept, not its bytes, so a resend can set DUP."""

    msg_id: int
    packet: Publish | Subscribe | Unsubscribe
    size: int
    tick: int
    state: str = QUEUED

    @property
    def qos(self) -> int:
        return self.packet.qos if isinstance(self.packet, Publish) else 1


class Client:
    def __init__(self, *, mac: bytes, bugs=frozenset(), resolver: T.Resolver | None = None,
                 conn_ids: Iterator[int] | None = None, seed: int | None = None):
        self.bugs = frozenset(bugs)
        self.resolver = resolver or T.Resolver()
        self.default_client_id = f"ESP32_{mac[3]:02x}{mac[4]:02X}{mac[5]:02X}"
        self.settings = Settings()
        self._conn_ids = conn_ids or count(1)
        self._rng = random.Random(seed)
        self._out: list = []
        self.outbox: list[Item] = []
        self.run = False
        self.state = "MQTT_STATE_INIT"
        self.conn: int | None = None
        self.phase: str | None = None  # None | "transport" | "connack"
        self._decoder: Decoder | None = None
        self._connack_deadline = 0
        self.keepalive_tick = 0
        self.wait_for_ping_resp = False
        self._ping_sent_at = 0
        self._last_sent = 0
        self.refresh_tick = 0
        self.reconnect_tick = 0
        self.wait_timeout_ms = MQTT_RECON_DEFAULT_MS
        self._reconnect_requested = False
        self.last_retransmit: int | None = None
        self.inbound_qos2: set[int] = set()  # packet ids received at QoS 2, waiting for PUBREL
        self.server = _ServerLimits()

    # ------------------------------------------------------------------ configuration

    def set_config(self, u: UserConfig, now: int = 0) -> str:
        """esp_mqtt_set_config: fields a C caller leaves zero either keep the stored value or reset to the
        default, exactly as esp-mqtt decides per field."""
        s = self.settings
        s.buffer_size = u.buffer_size or 1024
        s.out_size = u.out_size or s.buffer_size
        s.retransmit_ms = u.message_retransmit_timeout or 1000
        if u.port:
            s.port = u.port
        for attr in ("host", "path", "username", "password"):
            value = getattr(u, "hostname" if attr == "host" else attr)
            if value is not None:
                setattr(s, attr, value)
        if not u.set_null_client_id:
            if u.client_id is not None:
                s.client_id = u.client_id
            elif s.client_id is None:
                s.client_id = self.default_client_id
        if u.will_topic is not None:
            s.will_topic = u.will_topic
        if u.will_msg is not None:
            s.will_msg = u.will_msg
        if u.will_qos:
            s.will_qos = u.will_qos
        if u.will_retain:
            s.will_retain = True
        s.clean_session = not u.disable_clean_session
        if u.keepalive:
            s.keepalive = u.keepalive
        if s.keepalive == 0:
            s.keepalive = 120
        if u.disable_keepalive:
            s.keepalive = 0
        if u.protocol_ver:
            s.protocol = u.protocol_ver
        s.network_timeout_ms = u.timeout_ms or 10_000
        if u.refresh_connection_after_ms:
            s.refresh_connection_after_ms = u.refresh_connection_after_ms
        s.auto_reconnect = not u.disable_auto_reconnect
        s.reconnect_timeout_ms = u.reconnect_timeout_ms or MQTT_RECON_DEFAULT_MS
        s.tls = T.TlsSettings(ca_pem=u.ca_pem, client_cert_pem=u.client_cert_pem, client_key_pem=u.client_key_pem,
                              key_password=u.key_password, skip_cn_check=u.skip_cert_common_name_check,
                              common_name=u.common_name, alpn=tuple(u.alpn_protos or ()),
                              use_global_ca_store=u.use_global_ca_store, crt_bundle_attach=u.crt_bundle_attach)
        if u.transport:
            s.scheme = u.transport
        if u.uri is not None and self.set_uri(u.uri, now) != "ESP_OK":
            return "ESP_FAIL"
        s.outbox_limit = u.outbox_limit or 0
        tls_set = (u.ca_pem is not None or u.client_cert_pem is not None or u.use_global_ca_store
                   or bool(u.alpn_protos))
        if tls_set and s.scheme not in ("mqtts", "wss"):
            self._log("W", f"SSL related configs set, but the URI scheme specifies a non-SSL scheme, "
                           f"scheme = {s.scheme}", now)
            return "ESP_ERR_INVALID_ARG"
        return "ESP_OK"

    def set_uri(self, uri: str, now: int = 0) -> str:
        try:
            parts = urllib.parse.urlsplit(uri)
            port = parts.port
        except ValueError:
            parts = None
        if parts is None or not parts.scheme or not parts.hostname:
            self._log("E", f"Error parse uri = {uri}", now)
            return "ESP_FAIL"
        s = self.settings
        s.scheme = parts.scheme.lower()
        s.host = parts.hostname
        if port:
            s.port = port
        if parts.path:
            s.path = parts.path
        if parts.username is not None:
            s.username = urllib.parse.unquote(parts.username)
        if parts.password is not None:
            s.password = urllib.parse.unquote(parts.password)
        return "ESP_OK"

    @property
    def client_id(self) -> str:
        return self.settings.client_id or ""

    @property
    def protocol_level(self) -> int:
        return LEVELS[self.settings.protocol]

    # ------------------------------------------------------------------ API

    def start(self, now: int) -> str:
        if self.run:
            self._log("E", "Client has started", now)
            return "ESP_FAIL"
        self.run = True
        self.state = "MQTT_STATE_INIT"
        self.phase = None
        self.last_retransmit = None  # a local of the C task: new task, new timer
        self._service(now)
        return "ESP_OK"

    def stop(self, now: int) -> str:
        if not self.run:
            self._log("W", "Client asked to stop, but was not started", now)
            return "ESP_FAIL"
        if self.state == "MQTT_STATE_CONNECTED":
            self._send(self._disconnect_packet(), now)
        self.run = False
        self.state = "MQTT_STATE_DISCONNECTED"
        self._close_transport()
        self.outbox.clear()  # outbox_delete_all_items at task exit: no DELETED events
        self.inbound_qos2.clear()
        return "ESP_OK"

    def disconnect(self, now: int) -> str:
        self._log("I", "Client asked to disconnect", now)
        if self.run and self.state == "MQTT_STATE_CONNECTED":
            self._send(self._disconnect_packet(), now)
            self._abort(now)
            self._service(now)
        return "ESP_OK"

    def reconnect(self, now: int) -> str:
        self._log("I", "Client force reconnect requested", now)
        if self.state != "MQTT_STATE_WAIT_RECONNECT":
            self._log("D", "The client is not waiting for reconnection. Ignore the request", now)
            return "ESP_FAIL"
        self.wait_timeout_ms = 0
        self._reconnect_requested = True
        return "ESP_OK"

    def destroy(self, now: int) -> str:
        if self.run:
            self.stop(now)
        return "ESP_OK"

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, now: int) -> int:
        connected = self.state == "MQTT_STATE_CONNECTED"
        if connected and self.protocol_level == MQTT_5 and not self._publish_allowed(qos, retain, now):
            return -1
        if self.settings.outbox_limit > 0 and qos > 0 and len(payload) + self.outbox_size() > self.settings.outbox_limit:
            return -2
        item = self._make_publish(topic, payload, qos, retain, store=False, now=now)
        if not connected:
            if qos == 0:
                self._log("W", "Publish: Losing qos0 data when client not connected", now)
                return -1
            return item.msg_id
        if qos > 0 and self.protocol_level == MQTT_5 and self._inflight() >= self.server.receive_maximum:
            self._log("W", "Unable to publish now: maximum inflight messages reached", now)
            return item.msg_id
        self._send(item.packet, now)
        if qos > 0:
            item.tick = now  # set after the transmit, so a slow write does not trigger a retransmit
            item.state = TRANSMITTED
        return item.msg_id

    def enqueue(self, topic: str, payload: bytes, qos: int, retain: bool, store: bool, now: int) -> int:
        if self.settings.outbox_limit > 0 and len(payload) + self.outbox_size() > self.settings.outbox_limit:
            return -2
        if self.state == "MQTT_STATE_CONNECTED" and self.protocol_level == MQTT_5 \
                and not self._publish_allowed(qos, retain, now):
            return -1
        item = self._make_publish(topic, payload, qos, retain, store=store, now=now)
        if item is None or (item.msg_id == 0 and not store):
            return -1
        self._service(now)  # the task sends it on its next loop
        return item.msg_id

    def subscribe(self, topics: list[tuple[str, int]], now: int) -> int:
        if self.settings.outbox_limit > 0 and self.outbox_size() > self.settings.outbox_limit:
            return -2
        if self.state != "MQTT_STATE_CONNECTED":
            self._log("E", "Client has not connected", now)
            return -1
        max_qos = max(q for _, q in topics)
        if self.protocol_level == MQTT_5 and max_qos > self.server.maximum_qos:
            self._log("I", f"MQTT5 subscribe check fail: QoS {max_qos} not accepted by broker ", now)
            return -1
        packet = Subscribe(self._new_msg_id(), [Subscription(f, q) for f, q in topics])
        self._add_item(packet, now, TRANSMITTED)
        self._send(packet, now)
        return packet.packet_id

    def unsubscribe(self, topic: str, now: int) -> int:
        if self.state != "MQTT_STATE_CONNECTED":
            self._log("E", "Client has not connected", now)
            return -1
        packet = Unsubscribe(self._new_msg_id(), [topic])
        self._add_item(packet, now, TRANSMITTED)
        self._send(packet, now)
        return packet.packet_id

    def outbox_size(self) -> int:
        return sum(item.size for item in self.outbox)

    # ------------------------------------------------------------------ driver inputs

    def transport_connected(self, conn: int, now: int) -> None:
        if conn != self.conn or self.phase != "transport":
            return
        s = self.settings
        self._log("D", f"Transport connected to {s.scheme}://{s.host}:{self._port()}", now)
        self.phase = "connack"
        self._decoder = Decoder(self.protocol_level)
        self._connack_deadline = now + s.network_timeout_ms
        self.wait_for_ping_resp = False
        self._send(self._connect_packet(), now)

    def transport_failed(self, conn: int, failure: T.Failure, now: int) -> None:
        """The transport could not be opened (DNS, TCP, TLS)."""
        if conn != self.conn or self.phase != "transport":
            return
        self._connect_failed(failure, now)
        self._service(now)

    def _connect_failed(self, failure: T.Failure, now: int) -> None:
        self.conn = None  # the driver already closed it
        self._logs(failure.logs, now)
        self._log("E", "Error transport connect", now)
        self._transport_error(failure, now)
        self._abort(now)

    def transport_closed(self, conn: int, failure: T.Failure, now: int) -> None:
        """An open transport died: FIN, reset, write error."""
        if conn != self.conn:
            return
        self.conn = None
        self._logs(failure.logs, now)
        if failure.tls == "ESP_ERR_ESP_TLS_TCP_CLOSED_FIN":
            self._log("E", "esp_mqtt_handle_transport_read_error: transport_read(): EOF", now)
        code = esp_codes.ERRNO.get(failure.sock_errno or "", (0, ""))[0]
        self._log("E", f"esp_mqtt_handle_transport_read_error: transport_read() error: errno={code}", now)
        self._transport_error(failure, now)
        if self.phase == "connack":
            self._log("E", "esp_mqtt_connect: mqtt_message_receive() returned -2", now)
            self._log("E", "MQTT connect failed", now)
        else:
            self._log("E", "mqtt_process_receive: mqtt_message_receive() returned -2", now)
        self._abort(now)
        self._service(now)

    def received(self, conn: int, data: bytes, now: int) -> None:
        if conn != self.conn or self._decoder is None:
            return
        try:
            packets = self._decoder.feed_raw(data)
        except ProtocolError as exc:
            packets, bad = exc.decoded_raw, exc
        else:
            bad = None
        for packet, raw in packets:
            if self.conn != conn:
                return  # an earlier packet ended the connection
            self._on_packet(packet, raw, now)
        if bad is not None and self.conn == conn:
            self._log("E", f"mqtt_message_receive: received a malformed message: {bad}", now)
            self._transport_error(T.Failure(), now)
            self._abort(now)
        self._service(now)

    def tick(self, now: int) -> None:
        if self.phase == "connack" and now >= self._connack_deadline:
            self._log("E", "esp_mqtt_connect: mqtt_message_receive() returned 0", now)
            self._log("E", "MQTT connect failed", now)
            self._abort(now)  # no ERROR event: esp-mqtt dispatches none for a missing CONNACK
        self._service(now)

    def next_deadline(self) -> int | None:
        if not self.run:
            return None
        times = []
        if self.outbox:
            times.append(min(i.tick for i in self.outbox) + OUTBOX_EXPIRED_TIMEOUT_MS + 1)
        if self.phase == "connack":
            times.append(self._connack_deadline)
        if self.state == "MQTT_STATE_WAIT_RECONNECT" and self.settings.auto_reconnect:
            times.append(self.reconnect_tick + self.wait_timeout_ms + 1)
        if self.state == "MQTT_STATE_CONNECTED":
            if self.last_retransmit is not None and any(i.state != QUEUED for i in self.outbox):
                times.append(self.last_retransmit + self.settings.retransmit_ms)
            ka = self._keepalive_deadline()
            if ka is not None:
                times.append(ka)
            if self.settings.refresh_connection_after_ms:
                times.append(self.refresh_tick + self.settings.refresh_connection_after_ms)
        return min(times) if times else None

    def take_outputs(self) -> list:
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ the task loop

    def _service(self, now: int) -> None:
        if not self.run:
            return
        self._expire(now)
        for _ in range(3):  # a state change may lead straight into the next state's work
            state = self.state
            if state == "MQTT_STATE_INIT" and self.phase is None:
                self._begin_connect(now)
            elif state == "MQTT_STATE_WAIT_RECONNECT":
                s = self.settings
                if not s.auto_reconnect and self._reconnect_requested:
                    self._reconnect_requested = False
                    self.state = "MQTT_STATE_INIT"
                    self.wait_timeout_ms = MQTT_RECON_DEFAULT_MS
                    self._log("D", "Reconnecting per user request...", now)
                    continue
                if s.auto_reconnect and now - self.reconnect_tick > self.wait_timeout_ms:
                    self._reconnect_requested = False
                    self.state = "MQTT_STATE_INIT"
                    self.reconnect_tick = now
                    self._log("D", "Reconnecting...", now)
                    continue
            elif state == "MQTT_STATE_CONNECTED":
                self._connected_loop(now)
            break

    def _begin_connect(self, now: int) -> None:
        s = self.settings
        if s.scheme not in ("mqtt", "mqtts"):
            self._log("E", f"There are no transports valid, stop mqtt client, config scheme = {s.scheme}", now)
            self.run = False
            return
        self._emit("MQTT_EVENT_BEFORE_CONNECT", now)
        host = s.host or ""
        addresses = self.resolver.lookup(host) if host else []
        self.conn = next(self._conn_ids)
        self.phase = "transport"
        if not addresses:
            self._connect_failed(T.resolve_failure(host or "(null)"), now)
            return
        tls = s.tls if s.scheme == "mqtts" else None
        self._out.append(Open(self.conn, addresses[0], self._port(), host, tls, s.network_timeout_ms))

    def _port(self) -> int:
        return self.settings.port or DEFAULT_PORTS.get(self.settings.scheme or "", 1883)

    def _connected_loop(self, now: int) -> None:
        s = self.settings
        if self.last_retransmit is None:
            self.last_retransmit = now  # connected for the first time: no retransmit yet
        for item in [i for i in self.outbox if i.state == QUEUED]:
            if (isinstance(item.packet, Publish) and item.qos > 0 and self.protocol_level == MQTT_5
                    and self._inflight() >= self.server.receive_maximum):
                continue
            self._send(item.packet, now)
            if isinstance(item.packet, Publish) and item.qos == 0:
                self.outbox.remove(item)
            else:
                item.tick = now
                item.state = TRANSMITTED
        if now - self.last_retransmit >= s.retransmit_ms:
            self.last_retransmit = now
            item = next((i for i in self.outbox if i.state == TRANSMITTED), None)
            if item is not None and now - item.tick > s.retransmit_ms:
                self._resend(item, now)
            item = next((i for i in self.outbox if i.state == ACKNOWLEDGED), None)
            if item is not None and now - item.tick > s.retransmit_ms:
                self._send(Pubrel(item.msg_id), now)
        if not self._process_keepalive(now):
            return
        if s.refresh_connection_after_ms and now - self.refresh_tick >= s.refresh_connection_after_ms:
            self._log("D", "Refreshing the connection...", now)
            self._abort(now)
            self.state = "MQTT_STATE_INIT"
            self._begin_connect(now)

    def _keepalive_deadline(self) -> int | None:
        ka = self.settings.keepalive * 1000
        if ka <= 0:
            return None
        if self.wait_for_ping_resp:
            if "no-half-open" in self.bugs:
                return None
            if "late-ping" in self.bugs:
                return self._ping_sent_at + ka // 2
            return self.keepalive_tick + ka
        if "late-ping" in self.bugs:
            return self._last_sent + ka * 3 // 2
        return self.keepalive_tick + ka // 2

    def _process_keepalive(self, now: int) -> bool:
        deadline = self._keepalive_deadline()
        if deadline is None or now < deadline:
            return True
        if self.wait_for_ping_resp:
            self._log("E", "No PING_RESP, disconnected", now)
            self._abort(now)
            return False
        self._send(Pingreq(), now)
        self._log("D", "Sent PING successful", now)
        self.wait_for_ping_resp = True
        self._ping_sent_at = now
        return True

    def _expire(self, now: int) -> None:
        for item in [i for i in self.outbox if now - i.tick > OUTBOX_EXPIRED_TIMEOUT_MS]:
            self.outbox.remove(item)
            self._log("D", f"DELETE_SINGLE_EXPIRED msgid={item.msg_id}, remain size={self.outbox_size()}", now,
                      tag="outbox")
            self._emit("MQTT_EVENT_DELETED", now, msg_id=item.msg_id)

    # ------------------------------------------------------------------ packets in

    def _on_packet(self, packet, raw: bytes, now: int) -> None:
        if self.phase == "connack":
            if not isinstance(packet, Connack):
                self._log("E", f"Invalid MSG_TYPE response: {packet.TYPE.value}, read_len: {len(raw)}", now)
                self._log("E", "MQTT connect failed", now)
                self._abort(now)
                return
            self._on_connack(packet, now)
            return
        if "ping-starved" in self.bugs:
            self.keepalive_tick = now
        if len(raw) > self.settings.buffer_size and not isinstance(packet, Publish):
            self._too_big(now)
            return
        if isinstance(packet, Publish):
            self._on_publish(packet, raw, now)
        elif isinstance(packet, Puback):
            item = self._take(packet.packet_id, Publish)
            if item is not None:
                self._emit("MQTT_EVENT_PUBLISHED", now, msg_id=packet.packet_id, property=self._v5_props(packet))
        elif isinstance(packet, Pubrec):
            self._on_pubrec(packet, now)
        elif isinstance(packet, Pubrel):
            self._send(Pubcomp(packet.packet_id), now)
            self.inbound_qos2.discard(packet.packet_id)
        elif isinstance(packet, Pubcomp):
            item = self._take(packet.packet_id, Publish)
            if item is not None:
                self._emit("MQTT_EVENT_PUBLISHED", now, msg_id=packet.packet_id, property=self._v5_props(packet))
        elif isinstance(packet, Suback):
            if self._take(packet.packet_id, Subscribe) is not None:
                failed = any(code >= 0x80 for code in packet.reason_codes)
                handle = esp_codes.error_handle(
                    error_type="MQTT_ERROR_TYPE_SUBSCRIBE_FAILED" if failed else "MQTT_ERROR_TYPE_NONE")
                data = bytes(packet.reason_codes)
                self._emit("MQTT_EVENT_SUBSCRIBED", now, msg_id=packet.packet_id, data=data,
                           total_data_len=len(data), error_handle=handle, property=self._v5_props(packet))
        elif isinstance(packet, Unsuback):
            if self._take(packet.packet_id, Unsubscribe) is not None:
                self._emit("MQTT_EVENT_UNSUBSCRIBED", now, msg_id=packet.packet_id, property=self._v5_props(packet))
        elif isinstance(packet, Pingresp):
            self.wait_for_ping_resp = False
            self.keepalive_tick = now
        elif isinstance(packet, Disconnect):
            if self.protocol_level == MQTT_5:
                self._log("D", f"MQTT_MSG_TYPE_DISCONNECT reason 0x{packet.reason_code:02x}", now)
                self._emit("MQTT_EVENT_DISCONNECTED", now,
                           property={"disconnect_reason": packet.reason_code,
                                     "disconnect_reason_name": reason_name(packet.reason_code)})

    def _on_connack(self, connack: Connack, now: int) -> None:
        rc = connack.reason_code
        if rc != 0:
            if self.protocol_level == MQTT_5:
                self._log("W", f"Connection refused, reason code 0x{rc:02x} ({reason_name(rc)})", now)
            else:
                self._log("W", f"Connection refused, {_REFUSED_TEXT.get(rc, 'Unknown reason')}", now)
            handle = esp_codes.error_handle(error_type="MQTT_ERROR_TYPE_CONNECTION_REFUSED", connect_rc=rc)
            if self.protocol_level == MQTT_5:
                handle["connect_return_code"]["name"] = reason_name(rc)
            self._emit("MQTT_EVENT_ERROR", now, error_handle=handle)
            self._log("E", "MQTT connect failed", now)
            self._abort(now)
            return
        self.phase = None
        self.state = "MQTT_STATE_CONNECTED"
        self.server = _ServerLimits.from_connack(connack) if self.protocol_level == MQTT_5 else _ServerLimits()
        self._emit("MQTT_EVENT_CONNECTED", now, session_present=connack.session_present,
                   property=self._v5_props(connack))
        self.refresh_tick = self.keepalive_tick = now
        self.wait_for_ping_resp = False
        inflight = [i for i in self.outbox if i.state != QUEUED]
        if connack.session_present or "clean-replay" in self.bugs:
            for item in inflight:
                self._resume(item, now)
        else:
            self.inbound_qos2.clear()
            for item in inflight:
                self.outbox.remove(item)
                self._log("D", f"DELETE msgid={item.msg_id}: in flight, and the broker has no session", now,
                          tag="outbox")
                self._emit("MQTT_EVENT_DELETED", now, msg_id=item.msg_id)

    def _resume(self, item: Item, now: int) -> None:
        """Resend an in-flight item into a resumed session."""
        if item.state == ACKNOWLEDGED:
            if "publish-not-pubrel" in self.bugs:
                item.state = TRANSMITTED
                self._resend(item, now)
            else:
                self._send(Pubrel(item.msg_id), now)
        else:
            self._resend(item, now)

    def _on_publish(self, p: Publish, raw: bytes, now: int) -> None:
        if p.qos == 2 and p.packet_id in self.inbound_qos2 and "qos2-twice" not in self.bugs:
            self._log("D", f"QoS 2 message id={p.packet_id} already received, waiting for PUBREL", now)
        elif not self._deliver(p, raw, now):
            return
        if p.qos == 1:
            self._send(Puback(p.packet_id), now)
        elif p.qos == 2:
            self.inbound_qos2.add(p.packet_id)
            self._send(Pubrec(p.packet_id), now)

    def _deliver(self, p: Publish, raw: bytes, now: int) -> bool:
        """MQTT_EVENT_DATA, in pieces of buffer.size as esp-mqtt reads them: the first piece is what fits in the
        buffer after the fixed and variable header, the others are buffer.size each."""
        size = self.settings.buffer_size
        payload = p.payload
        header = len(raw) - len(payload)
        if len(raw) <= size:
            pieces = [payload]
        elif header > size:
            self._too_big(now)
            return False
        else:
            first = size - header
            pieces = [payload[:first]] + [payload[i:i + size] for i in range(first, len(payload), size)]
        if "big-data-truncated" in self.bugs and len(pieces) > 1:
            pieces.pop()
        topic = p.topic.encode() if isinstance(p.topic, str) else bytes(p.topic)
        offset = 0
        for index, piece in enumerate(pieces):
            self._emit("MQTT_EVENT_DATA", now, msg_id=p.packet_id or 0, topic=topic if index == 0 else None,
                       data=piece, total_data_len=len(payload), current_data_offset=offset, qos=p.qos,
                       retain=p.retain, dup=p.dup, property=self._v5_props(p) if index == 0 else None)
            offset += len(piece)
        return True

    def _on_pubrec(self, packet: Pubrec, now: int) -> None:
        item = next((i for i in self.outbox if i.msg_id == packet.packet_id and isinstance(i.packet, Publish)), None)
        if self.protocol_level == MQTT_5 and packet.reason_code >= 0x80:
            self._log("W", f"PUBREC id={packet.packet_id} reason 0x{packet.reason_code:02x}: flow ends", now)
            if item is not None:
                self.outbox.remove(item)
                self._emit("MQTT_EVENT_PUBLISHED", now, msg_id=packet.packet_id, property=self._v5_props(packet))
            return
        self._send(Pubrel(packet.packet_id), now)
        if item is not None:
            item.state = ACKNOWLEDGED

    def _too_big(self, now: int) -> None:
        self._log("E", "mqtt_message_receive: message is too big, insufficient buffer size", now)
        self._transport_error(T.Failure(), now)
        self._abort(now)

    # ------------------------------------------------------------------ packets out

    def _connect_packet(self) -> Connect:
        s = self.settings
        will = None
        if s.will_topic and "no-will" not in self.bugs:
            will = Will(s.will_topic, s.will_msg, s.will_qos, s.will_retain)
        return Connect(client_id=s.client_id or "", clean=s.clean_session or "session-ignored" in self.bugs,
                       keepalive=s.keepalive, username=s.username,
                       password=s.password.encode() if s.password is not None else None,
                       will=will, protocol_level=self.protocol_level)

    def _disconnect_packet(self) -> Disconnect:
        return Disconnect()

    def _make_publish(self, topic: str, payload: bytes, qos: int, retain: bool, *, store: bool, now: int) -> Item:
        retain = retain and "retain-dropped" not in self.bugs
        packet = Publish(topic, payload, qos, retain, False, self._new_msg_id() if qos else None)
        item = Item(packet.packet_id or 0, packet, len(encode(packet, self.protocol_level)), now)
        if qos > 0 or store:
            self.outbox.append(item)
            self._log("D", f"ENQUEUE msgid={item.msg_id}, msg_type=3, len={item.size}, size={self.outbox_size()}",
                      now, tag="outbox")
        return item

    def _add_item(self, packet, now: int, state: str) -> Item:
        item = Item(packet.packet_id, packet, len(encode(packet, self.protocol_level)), now, state)
        self.outbox.append(item)
        return item

    def _resend(self, item: Item, now: int) -> None:
        packet = item.packet
        if isinstance(packet, Publish) and packet.qos > 0:
            packet = replace(packet, dup="no-dup" not in self.bugs)
            self._log("D", f"Sending Duplicated QoS{packet.qos} message with id={item.msg_id}", now)
        self._send(packet, now)

    def _send(self, packet, now: int) -> None:
        if self.conn is None:
            return
        self._out.append(Send(self.conn, encode(packet, self.protocol_level)))
        self._last_sent = now

    def _take(self, msg_id: int, kind: type) -> Item | None:
        for item in self.outbox:
            if item.msg_id == msg_id and isinstance(item.packet, kind):
                self.outbox.remove(item)
                return item
        return None

    def _new_msg_id(self) -> int:
        used = {i.msg_id for i in self.outbox}
        while True:  # platform_random(65535), never 0; unlike esp-mqtt we skip ids still in the outbox
            msg_id = self._rng.randrange(1, 65535)
            if msg_id not in used:
                return msg_id

    def _inflight(self) -> int:
        return sum(1 for i in self.outbox if isinstance(i.packet, Publish) and i.qos > 0 and i.state != QUEUED)

    def _publish_allowed(self, qos: int, retain: bool, now: int) -> bool:
        if qos > self.server.maximum_qos:
            self._log("E", f"Server not support QoS{qos}", now)
            return False
        if retain and not self.server.retain_available:
            self._log("E", "Server not support retain", now)
            return False
        return True

    # ------------------------------------------------------------------ connection end, events, logs

    def _abort(self, now: int) -> None:
        """esp_mqtt_abort_connection: close, wait for the reconnect, MQTT_EVENT_DISCONNECTED."""
        self._close_transport()
        self.wait_timeout_ms = self.settings.reconnect_timeout_ms
        self.reconnect_tick = now
        self.state = "MQTT_STATE_WAIT_RECONNECT"
        self.wait_for_ping_resp = False
        self._log("D", f"Reconnect after {self.wait_timeout_ms} ms", now)
        self._emit("MQTT_EVENT_DISCONNECTED", now)

    def _close_transport(self) -> None:
        if self.conn is not None:
            self._out.append(Close(self.conn))
        self.conn = None
        self.phase = None
        self._decoder = None

    def _transport_error(self, failure: T.Failure, now: int) -> None:
        tls = failure.tls
        if failure.handshake and "wrong-tls-error" in self.bugs:
            tls = "ESP_ERR_ESP_TLS_FAILED_CONNECT_TO_HOST"
        self._emit("MQTT_EVENT_ERROR", now, error_handle=failure.error_handle(tls_name=tls))

    def _emit(self, name: str, now: int, **fields) -> None:
        self._out.append(Event(name, now, self.settings.protocol, **fields))

    def _v5_props(self, packet) -> dict | None:
        if self.protocol_level != MQTT_5:
            return None
        props = getattr(packet, "properties", None) or {}
        out: dict = {}
        for key in ("payload_format_indicator", "response_topic", "content_type"):
            if key in props:
                out[key] = props[key]
        if "correlation_data" in props:
            out["correlation_data"] = bytes(props["correlation_data"])
        if "subscription_identifier" in props:
            ids = props["subscription_identifier"]
            out["subscribe_id"] = ids[0] if isinstance(ids, list) else ids
        if "user_property" in props:
            out["user_property"] = [list(pair) for pair in props["user_property"]]
        reason = getattr(packet, "reason_code", 0)
        if reason:
            out["reason_code"] = reason
        return out

    def _log(self, level: str, message: str, now: int, *, tag: str = "mqtt_client") -> None:
        self._out.append(LogLine(level, tag, message, now))

    def _logs(self, logs, now: int) -> None:
        for level, tag, message in logs:
            self._out.append(LogLine(level, tag, message, now))


@dataclass(frozen=True, slots=True)
class _ServerLimits:
    """What a v5 CONNACK allows (esp_mqtt5_parse_connack)."""

    receive_maximum: int = 65535
    maximum_qos: int = 2
    retain_available: bool = True

    @classmethod
    def from_connack(cls, connack: Connack) -> "_ServerLimits":
        p = connack.properties
        return cls(receive_maximum=p.get("receive_maximum", 65535), maximum_qos=p.get("maximum_qos", 2),
                   retain_available=bool(p.get("retain_available", 1)))
