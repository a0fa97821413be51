"""Sans-IO device side of docs/dut-protocol.md v1: serial bytes in, serial lines and network actions out.

The firmware owns one espmqtt.Client at most (INIT .. DESTROY), the blobs, the log levels, the device clock and
the event numbering. It never touches a socket or a clock: `now` (ms, monotonic) comes with every call and the
driver (server.py) performs what take_output() returns. Each serial chunk it returns is one whole line, to be
written with one write."""

from __future__ import annotations

import base64
import binascii
import errno as errno_mod
import re
import zlib
from dataclasses import dataclass, field
from itertools import count

from harness import __version__
from harness.device import esp_codes
from harness.device.lines import (
    DEFAULT_MAX_LINE, PROTO_MAJOR, PROTO_MINOR, Malformed, Message, encode_message, parse_frame, split_log_prefix,
    strip_eol,
)
from harness.device.virtual import espmqtt
from harness.device.virtual import transport as T
from harness.device.virtual.config import ConfigError, parse_config

IDF_VERSION = "v5.3.1-virtual"
ESP_MQTT_VERSION = "1.1.0"
CAPS = ("mqtt5", "tls", "blob", "dns", "tcp_probe", "set_time", "reset", "loglevel", "crash")
HEAP_TOTAL = 280_000
BLOB_RAM = 1 << 20  # what all blobs together may hold
MAX_PAYLOAD = 1 << 20
LOG_LEVELS = {"NONE": 0, "ERROR": 1, "WARN": 2, "INFO": 3, "DEBUG": 4, "VERBOSE": 5}
_LETTER_LEVEL = {"E": 1, "W": 2, "I": 3, "D": 4, "V": 5}
_ID = re.compile(rb"@@(\d{1,3}) (-|\d{1,10})[ \n]")
_CRASH_TEXT = {
    "ESP_RST_PANIC": ["Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.",
                      "", "Core  0 register dump:", "PC      : 0x400d3f2a  PS      : 0x00060330",
                      "", "Backtrace: 0x400d3f27:0x3ffb5e80 0x400d8a11:0x3ffb5ea0", "", "ELF file SHA256: 0000000000000000",
                      "", "Rebooting..."],
    "ESP_RST_TASK_WDT": ["E (%t) task_wdt: Task watchdog got triggered. The following tasks/users did not reset "
                         "the watchdog in time:", "E (%t) task_wdt:  - IDLE0 (CPU 0)", "Rebooting..."],
    "ESP_RST_INT_WDT": ["Guru Meditation Error: Core  0 panic'ed (Interrupt wdt timeout on CPU0).", "Rebooting..."],
    "ESP_RST_BROWNOUT": ["Brownout detector was triggered", ""],
}
_ROM_RESET = {"ESP_RST_POWERON": "0x1 (POWERON_RESET)", "ESP_RST_SW": "0xc (SW_CPU_RESET)",
              "ESP_RST_PANIC": "0xc (SW_CPU_RESET)", "ESP_RST_INT_WDT": "0x8 (TG1WDT_SYS_RESET)",
              "ESP_RST_TASK_WDT": "0x7 (TG0WDT_SYS_RESET)", "ESP_RST_WDT": "0x10 (RTCWDT_RTC_RESET)",
              "ESP_RST_BROWNOUT": "0xf (RTCWDT_BROWN_OUT_RESET)", "ESP_RST_EXT": "0x1 (POWERON_RESET)",
              "ESP_RST_DEEPSLEEP": "0x5 (DEEPSLEEP_RESET)"}
BOOT_MS = 320  # uptime when the banner goes out, as on a real board


# ---- driver actions besides espmqtt's Open/Send/Close

@dataclass(frozen=True, slots=True)
class Probe:
    """TCP_PROBE: connect to address:port within timeout_ms and call probe_done(token, ...)."""

    token: int
    address: str
    port: int
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class ResetNet:
    """The device rebooted: drop every socket and probe."""


class Err(Exception):
    def __init__(self, name: str, msg: str, **extra):
        super().__init__(msg)
        self.name, self.msg, self.extra = name, msg, extra


@dataclass(slots=True)
class Blob:
    size: int
    data: bytearray = field(default_factory=bytearray)
    complete: bool = False


_NO_ANSWER = object()


class Firmware:
    def __init__(self, *, mac: bytes, bugs=frozenset(), resolver: T.Resolver | None = None,
                 max_line: int = DEFAULT_MAX_LINE, host_epoch_offset: float = 0.0, seed: int | None = None):
        """`host_epoch_offset`: host wall clock minus now/1000, so the device clock starts "SNTP-synced"."""
        self.mac = bytes(mac)
        self.bugs = frozenset(bugs)
        self.resolver = resolver or T.Resolver()
        self.max_line = max_line
        self.host_epoch_offset = host_epoch_offset
        self._seed = seed
        self._serial: list[bytes] = []
        self._actions: list = []
        self._inbuf = bytearray()
        self._discarding: bytes | None = None  # head of an over-long line being skipped
        self._conn_ids = count(1)
        self._probe_ids = count(1)
        self._probes: dict[int, int] = {}  # token -> request id
        self.boot_count = 0
        self._reboot_after: str | None = None
        self.reset_reason = "ESP_RST_POWERON"
        self._reset_state(0)

    def _reset_state(self, now: int) -> None:
        self.boot_ms = now - BOOT_MS
        self.client: espmqtt.Client | None = None
        self.blobs: dict[str, Blob] = {}
        self.levels: dict[str, int] = {"*": LOG_LEVELS["INFO"]}
        self.seq = 0
        self._last_id: int | None = None  # the previous request's id (DUPLICATE_ID)
        self.epoch_offset = self.host_epoch_offset
        self.time_source = "sntp"
        self.min_free_heap = HEAP_TOTAL
        self._crc = 0
        self._probes.clear()

    # ------------------------------------------------------------------ identity

    @property
    def mac_text(self) -> str:
        return ":".join(f"{b:02x}" for b in self.mac)

    def banner(self) -> dict:
        return {"proto": PROTO_MAJOR, "proto_minor": PROTO_MINOR, "fw": f"mqtt-harness-virtual {__version__}",
                "idf": IDF_VERSION, "esp_mqtt": ESP_MQTT_VERSION, "chip": "virtual", "mac": self.mac_text,
                "reset_reason": self.reset_reason, "max_line": self.max_line, "platform": "virtual",
                "caps": list(CAPS), "bugs": sorted(self.bugs)}

    def epoch(self, now: int) -> float:
        """The device wall clock (certificate date checks use it)."""
        return self.epoch_offset + now / 1000

    def uptime(self, now: int) -> int:
        return now - self.boot_ms

    # ------------------------------------------------------------------ boot

    def boot(self, now: int, reason: str = "ESP_RST_POWERON") -> None:
        if self.client is not None:
            self.client.destroy(now)
            self._drain_client(now)
        self._actions.append(ResetNet())
        self._reset_state(now)
        self.reset_reason = reason
        self.boot_count += 1
        rom = [f"ets Jul 29 2019 12:21:46", "", f"rst:{_ROM_RESET.get(reason, '0x1 (POWERON_RESET)')},"
               "boot:0x13 (SPI_FAST_FLASH_BOOT)", "configsip: 0, SPIWP:0xee", "mode:DIO, clock div:2",
               "load:0x3fff0030,len:7176", "entry 0x400805cc"]
        for text in rom:
            self._raw(text)
        for stamp, tag, text in (
                (29, "boot", f"ESP-IDF {IDF_VERSION} 2nd stage bootloader"),
                (29, "boot", "chip revision: v3.0"),
                (250, "cpu_start", "Pro cpu start user code"),
                (268, "app_init", "Application information:"),
                (273, "app_init", "Project name:     mqtt-harness-dut"),
                (278, "app_init", f"App version:      {__version__}"),
                (288, "app_init", f"ESP-IDF:          {IDF_VERSION}"),
                (300, "main_task", "Started on CPU0"),
                (310, "dut", f"virtual ESP32 {self.mac_text}, reset reason {reason}, device protocol "
                             f"{PROTO_MAJOR}.{PROTO_MINOR}, max_line {self.max_line}"
                             + (f", bugs: {', '.join(sorted(self.bugs))}" if self.bugs else ""))):
            self._raw(f"I ({stamp}) {tag}: {text}")
        self._line(Message("BOOT", self.banner()))

    def _crash(self, reason: str, now: int) -> None:
        for text in _CRASH_TEXT.get(reason, ["Rebooting..."]):
            self._raw(text.replace("%t", str(self.uptime(now))))
        self.boot(now, reason)

    # ------------------------------------------------------------------ serial in

    def feed(self, data: bytes, now: int) -> None:
        """Bytes from the host, in any chunking."""
        while data:
            nl = data.find(b"\n")
            chunk, data = (data, b"") if nl < 0 else (data[:nl], data[nl + 1:])
            if self._discarding is not None:
                if nl >= 0:
                    self._too_long(self._discarding)
                    self._discarding = None
                continue
            self._inbuf += chunk
            if nl < 0:
                if len(self._inbuf) > self.max_line + 1:  # +1: a '\r' before the newline does not count
                    self._discarding = bytes(self._inbuf[:64])
                    self._inbuf.clear()
                break
            line = strip_eol(bytes(self._inbuf))
            self._inbuf.clear()
            if len(line) > self.max_line:
                self._too_long(line[:64])
            else:
                self._handle_line(line, now)

    def _too_long(self, head: bytes) -> None:
        m = _ID.match(head[head.find(b"@@"):] if b"@@" in head else b"")
        ident = int(m[2]) if m and m[2] != b"-" else None
        self._answer(ident, Err("LINE_TOO_LONG", f"request line longer than max_line {self.max_line}"))

    def _handle_line(self, line: bytes, now: int) -> None:
        prefix, frame = split_log_prefix(line)
        if frame is None:
            if line.strip():
                self._log("W", "dut", f"ignored a line without the @@ marker ({len(line)} bytes)", now)
            return
        head = _ID.match(frame + b" ")
        ident = int(head[2]) if head and head[2] != b"-" else None
        if head and int(head[1]) != PROTO_MAJOR:
            self._answer(ident, Err("PROTO_VERSION", f"this device speaks protocol {PROTO_MAJOR}, the request is "
                                                     f"version {int(head[1])}", proto=PROTO_MAJOR))
            return
        msg = parse_frame(frame)
        if isinstance(msg, Malformed):
            name = "BAD_JSON" if "JSON" in msg.why else "BAD_FRAME"
            self._answer(ident, Err(name, msg.why))
            return
        if msg.id is None or not 1 <= msg.id <= 2147483647:
            self._answer(None, Err("BAD_ARGS", "a request needs an id from 1 to 2147483647"))
            return
        # the previous id again is a line sent twice: running it again could publish twice (protocol §4)
        if msg.kind == "HELLO":
            self._last_id = None
        elif msg.id == self._last_id:
            self._answer(msg.id, Err("DUPLICATE_ID", "this id was the previous request's; not executed"))
            return
        else:
            self._last_id = msg.id
        self._request(msg, now)

    def _request(self, msg: Message, now: int) -> None:
        handler = getattr(self, f"_verb_{msg.kind.lower()}", None)
        if handler is None or msg.kind in ("BOOT", "OK", "ERR", "EVT"):
            self._answer(msg.id, Err("UNKNOWN_VERB", f"unknown verb {msg.kind}"))
            return
        try:
            result = handler(msg.body, now, msg.id)
        except Err as exc:
            result = exc
        except ConfigError as exc:
            result = Err(exc.name, str(exc))
        if result is not _NO_ANSWER and result is not None:
            self._answer(msg.id, result)
        self._drain_client(now)
        if self._reboot_after:
            reason, self._reboot_after = self._reboot_after, None
            self.boot(now, reason)

    def _answer(self, ident: int | None, result) -> None:
        if isinstance(result, Err):
            self._line(Message("ERR", {"name": result.name, "msg": result.msg, **result.extra}, id=ident))
        else:
            self._line(Message("OK", result, id=ident))

    # ------------------------------------------------------------------ housekeeping verbs

    def _verb_hello(self, body, now, rid):
        return self.banner()

    def _verb_ping(self, body, now, rid):
        return {}

    def _verb_sysinfo(self, body, now, rid):
        free = self._free_heap()
        return {"free_heap": free, "min_free_heap": self.min_free_heap, "uptime_ms": self.uptime(now),
                "time": int(self.epoch(now)), "time_source": self.time_source, "ip": "127.0.0.1",
                "netif": "loopback", **self.banner()}

    def _verb_set_time(self, body, now, rid):
        epoch = body.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or epoch < 0:
            raise Err("BAD_ARGS", "epoch must be a non-negative number (seconds since 1970)")
        self.epoch_offset = epoch - now / 1000
        self.time_source = "set"
        self._log("I", "dut", f"clock set to {int(epoch)}", now)
        return {"time": int(epoch)}

    def _verb_loglevel(self, body, now, rid):
        tag, level = body.get("tag", "*"), body.get("level")
        if not isinstance(tag, str) or not tag:
            raise Err("BAD_ARGS", "tag must be a non-empty string ('*' for all)")
        if level not in LOG_LEVELS:
            raise Err("BAD_ARGS", f"level must be one of {', '.join(LOG_LEVELS)}")
        if tag == "*":
            self.levels = {"*": LOG_LEVELS[level]}
        else:
            self.levels[tag] = LOG_LEVELS[level]
        return {}

    def _verb_reset(self, body, now, rid):
        self._log("I", "dut", "restarting (esp_restart)", now)
        self._reboot_after = "ESP_RST_SW"
        return {}

    def _verb_crash(self, body, now, rid):
        reason = body.get("reason", "ESP_RST_PANIC")
        if reason not in esp_codes.RESET_REASONS or reason in ("ESP_RST_POWERON", "ESP_RST_SW", "ESP_RST_UNKNOWN"):
            raise Err("BAD_ARGS", "reason must be a crash reset reason such as ESP_RST_PANIC, ESP_RST_TASK_WDT, "
                                  "ESP_RST_INT_WDT, ESP_RST_BROWNOUT")
        self._crash(reason, now)
        return _NO_ANSWER

    # ------------------------------------------------------------------ blobs

    def _verb_blob_begin(self, body, now, rid):
        name, size = _text(body, "name"), _int(body, "size", 0, BLOB_RAM)
        used = sum(b.size for n, b in self.blobs.items() if n != name)
        if used + size > BLOB_RAM:
            raise Err("NO_MEMORY", f"blob {name!r} of {size} bytes does not fit ({BLOB_RAM - used} free)")
        self.blobs[name] = Blob(size)
        return {}

    def _verb_blob_chunk(self, body, now, rid):
        blob = self._blob(_text(body, "name"))
        offset = _int(body, "offset", 0, BLOB_RAM)
        data = _b64(body, "b64")
        if offset != len(blob.data):
            raise Err("BAD_ARGS", f"offset is {offset}, expected {len(blob.data)} (chunks come in order)")
        if offset + len(data) > blob.size:
            raise Err("BAD_ARGS", f"chunk ends at {offset + len(data)}, past the blob size {blob.size}")
        blob.data += data
        blob.complete = False
        return {"received": len(blob.data)}

    def _verb_blob_end(self, body, now, rid):
        name = _text(body, "name")
        blob = self._blob(name)
        crc = body.get("crc32")
        if not isinstance(crc, str):
            raise Err("BAD_ARGS", "crc32 must be a hex string such as \"0x1c291ca3\"")
        try:
            want = int(crc, 16)
        except ValueError:
            raise Err("BAD_ARGS", "crc32 must be a hex string such as \"0x1c291ca3\"") from None
        got = zlib.crc32(blob.data) & 0xFFFFFFFF
        if len(blob.data) != blob.size or got != want:
            raise Err("CRC_MISMATCH", f"blob {name!r}: {len(blob.data)} of {blob.size} bytes, crc32 0x{got:08x}, "
                                      f"expected {crc}", size=len(blob.data), crc32=f"0x{got:08x}")
        blob.complete = True
        return {"size": blob.size}

    def _verb_blob_free(self, body, now, rid):
        name = _text(body, "name")
        return {"existed": self.blobs.pop(name, None) is not None}

    def _blob(self, name: str) -> Blob:
        if name not in self.blobs:
            raise Err("NO_BLOB", f"no blob named {name!r}")
        return self.blobs[name]

    def _complete_blob(self, name: str) -> bytes | None:
        blob = self.blobs.get(name)
        return bytes(blob.data) if blob is not None and blob.complete else None

    # ------------------------------------------------------------------ client verbs

    def _verb_init(self, body, now, rid):
        if self.client is not None:
            raise Err("CLIENT_EXISTS", "a client exists: DESTROY it first")
        cfg = self._config(body, now)
        client = espmqtt.Client(mac=self.mac, bugs=self.bugs, resolver=self.resolver, conn_ids=self._conn_ids,
                                seed=self._seed)
        err = client.set_config(cfg, now)
        self._route(client.take_outputs(), now)
        if err != "ESP_OK":
            raise Err("ESP_ERR", f"esp_mqtt_client_init returned NULL (esp_mqtt_set_config: {err})", err=err)
        self.client = client
        return {"client_id": client.client_id}

    def _verb_config(self, body, now, rid):
        client = self._need_client()
        return {"err": client.set_config(self._config(body, now), now)}

    def _config(self, body: dict, now: int):
        cfg = parse_config(body.get("config", {}), self._complete_blob)
        if cfg.ignored:
            self._log("W", "dut", f"config: ignored unknown field(s): {', '.join(cfg.ignored)}", now)
        return cfg

    def _verb_set_uri(self, body, now, rid):
        client = self._need_client()
        return {"err": client.set_uri(_text(body, "uri"), now)}

    def _verb_start(self, body, now, rid):
        return {"err": self._need_client().start(now)}

    def _verb_stop(self, body, now, rid):
        return {"err": self._need_client().stop(now)}

    def _verb_disconnect(self, body, now, rid):
        return {"err": self._need_client().disconnect(now)}

    def _verb_reconnect(self, body, now, rid):
        return {"err": self._need_client().reconnect(now)}

    def _verb_destroy(self, body, now, rid):
        if self.client is not None:
            self.client.destroy(now)
            self._drain_client(now)
            self.client = None
        return {"err": "ESP_OK"}

    def _verb_publish(self, body, now, rid):
        client = self._need_client()
        topic, qos, retain, payload = self._publish_args(body)
        return {"msg_id": client.publish(topic, payload, qos, retain, now)}

    def _verb_enqueue(self, body, now, rid):
        client = self._need_client()
        topic, qos, retain, payload = self._publish_args(body)
        store = _bool(body, "store", False)
        return {"msg_id": client.enqueue(topic, payload, qos, retain, store, now)}

    def _verb_subscribe(self, body, now, rid):
        client = self._need_client()
        topics = body.get("topics")
        if not isinstance(topics, list) or not topics:
            raise Err("BAD_ARGS", "topics must be a non-empty list of {\"filter\":...,\"qos\":...}")
        parsed = []
        for i, entry in enumerate(topics):
            if not isinstance(entry, dict) or not isinstance(entry.get("filter"), str):
                raise Err("BAD_ARGS", f"topics[{i}].filter must be a string")
            parsed.append((entry["filter"], _int(entry, "qos", 0, 2, default=0, where=f"topics[{i}].")))
        return {"msg_id": client.subscribe(parsed, now)}

    def _verb_unsubscribe(self, body, now, rid):
        client = self._need_client()
        return {"msg_id": client.unsubscribe(_text(body, "topic"), now)}

    def _verb_outbox(self, body, now, rid):
        return {"size": self._need_client().outbox_size()}

    def _verb_state(self, body, now, rid):
        return {"state": self._need_client().state}

    def _need_client(self) -> espmqtt.Client:
        if self.client is None:
            raise Err("NO_CLIENT", "no client: INIT first")
        return self.client

    def _publish_args(self, body):
        topic = _text(body, "topic", empty=True)
        qos = _int(body, "qos", 0, 2, default=0)
        retain = _bool(body, "retain", False)
        given = [k for k in ("payload_b64", "blob", "pattern") if k in body]
        if len(given) > 1:
            raise Err("BAD_ARGS", f"give one payload, not {' and '.join(given)}")
        if "payload_b64" in body:
            payload = _b64(body, "payload_b64")
        elif "blob" in body:
            name = _text(body, "blob")
            data = self._complete_blob(name)
            if data is None:
                raise Err("NO_BLOB", f"no complete blob named {name!r}")
            payload = data
        elif "pattern" in body:
            pattern = _text(body, "pattern", empty=True).encode()
            reps = _int(body, "reps", 0, MAX_PAYLOAD, default=1)
            if len(pattern) * reps > MAX_PAYLOAD:
                raise Err("NO_MEMORY", f"payload of {len(pattern) * reps} bytes is over {MAX_PAYLOAD}")
            payload = pattern * reps
        else:
            payload = b""
        return topic, qos, retain, payload

    # ------------------------------------------------------------------ diagnosis verbs

    def _verb_dns(self, body, now, rid):
        host = _text(body, "host")
        _int(body, "timeout_ms", 0, 600_000, default=5000)
        addresses = self.resolver.lookup(host)
        if not addresses:
            self._log("W", "dut", f"getaddrinfo({host}) failed: EAI_FAIL", now)
            return {"addresses": [], "error": "EAI_FAIL", "elapsed_ms": 1}
        return {"addresses": addresses, "elapsed_ms": 0 if addresses == [host.strip("[]")] else 1}

    def _verb_tcp_probe(self, body, now, rid):
        host = _text(body, "host")
        port = _int(body, "port", 1, 65535)
        timeout_ms = _int(body, "timeout_ms", 1, 600_000, default=3000)
        addresses = self.resolver.lookup(host)
        if not addresses:
            return {"connected": False, "error": "EAI_FAIL", "errno": esp_codes.errno_obj(None),
                    "timed_out": False, "elapsed_ms": 1}
        token = next(self._probe_ids)
        self._probes[token] = rid
        self._actions.append(Probe(token, addresses[0], port, timeout_ms))
        return None  # answered by probe_done

    def probe_done(self, token: int, *, connected: bool, errno_code: int | None, timed_out: bool,
                   elapsed_ms: int, now: int) -> None:
        rid = self._probes.pop(token, None)
        if rid is None:
            return  # the device rebooted meanwhile
        if connected:
            result = {"connected": True, "elapsed_ms": elapsed_ms}
        else:
            name = "ETIMEDOUT" if timed_out else errno_mod.errorcode.get(errno_code or 0)
            result = {"connected": False, "errno": esp_codes.errno_obj(name), "timed_out": timed_out,
                      "elapsed_ms": elapsed_ms}
        self._answer(rid, result)

    # ------------------------------------------------------------------ transports (driver -> client)

    def transport_connected(self, conn: int, now: int) -> None:
        self._to_client("transport_connected", conn, now)

    def transport_failed(self, conn: int, failure: T.Failure, now: int) -> None:
        self._to_client("transport_failed", conn, failure, now)

    def transport_closed(self, conn: int, failure: T.Failure, now: int) -> None:
        self._to_client("transport_closed", conn, failure, now)

    def received(self, conn: int, data: bytes, now: int) -> None:
        self._to_client("received", conn, data, now)

    def _to_client(self, method: str, *args) -> None:
        if self.client is not None:
            getattr(self.client, method)(*args)
            self._drain_client(args[-1])

    def tick(self, now: int) -> None:
        if self.client is not None:
            self.client.tick(now)
            self._drain_client(now)

    def next_deadline(self) -> int | None:
        return self.client.next_deadline() if self.client is not None else None

    def take_output(self) -> tuple[list[bytes], list]:
        serial, actions = self._serial, self._actions
        self._serial, self._actions = [], []
        return serial, actions

    # ------------------------------------------------------------------ client outputs -> lines

    def _drain_client(self, now: int) -> None:
        if self.client is not None:
            self._route(self.client.take_outputs(), now)

    def _route(self, outputs, now: int) -> None:
        for out in outputs:
            if isinstance(out, espmqtt.Event):
                self._event(out)
            elif isinstance(out, espmqtt.LogLine):
                self._log(out.level, out.tag, out.message, out.now)
            else:
                self._actions.append(out)

    def _event(self, ev: espmqtt.Event) -> None:
        body = {"seq": 0, "t_ms": self.uptime(ev.now), "event": ev.name, "event_id": esp_codes.EVENTS[ev.name],
                "msg_id": ev.msg_id, "session_present": ev.session_present}
        body.update(_topic_fields(ev.topic))
        body.update({"data_b64": "", "data_len": 0, "total_data_len": ev.total_data_len,
                     "current_data_offset": ev.current_data_offset, "qos": ev.qos, "retain": ev.retain,
                     "dup": ev.dup, "protocol_ver": ev.protocol_ver, "error_handle": ev.error_handle})
        if ev.property is not None:
            prop = dict(ev.property)
            if "correlation_data" in prop:
                prop["correlation_data_b64"] = base64.b64encode(prop.pop("correlation_data")).decode()
            body["property"] = prop
        is_data = ev.name == "MQTT_EVENT_DATA"
        if is_data and ev.current_data_offset == 0:
            self._crc = 0
        data = ev.data
        per_line = self._bytes_per_line(body)
        offset = 0
        while True:
            piece = data[offset:offset + per_line]
            line = dict(body)
            if offset:
                line.update(_topic_fields(None))
            line["data_b64"] = base64.b64encode(piece).decode()
            line["data_len"] = len(piece)
            line["current_data_offset"] = ev.current_data_offset + offset
            if is_data:
                self._crc = zlib.crc32(piece, self._crc)
                if line["current_data_offset"] + len(piece) == ev.total_data_len:
                    line["crc32"] = f"0x{self._crc & 0xFFFFFFFF:08x}"
            self.seq += 1
            line["seq"] = self.seq
            if not ("lost-event" in self.bugs and self.seq == 4):
                self._line(Message("EVT", line))
            offset += len(piece)
            if offset >= len(data):
                break

    def _bytes_per_line(self, body: dict) -> int:
        probe = dict(body, seq=2147483647, crc32="0x00000000", current_data_offset=2147483647,
                     data_len=2147483647)
        overhead = len(encode_message(Message("EVT", probe)))  # includes the newline
        return max(3, (self.max_line + 1 - overhead) // 4 * 3)

    # ------------------------------------------------------------------ output

    def _line(self, msg: Message) -> None:
        self._serial.append(encode_message(msg))

    def _raw(self, text: str) -> None:
        self._serial.append(text.encode() + b"\n")

    def _log(self, level: str, tag: str, message: str, now: int) -> None:
        allowed = self.levels.get(tag, self.levels["*"])
        if _LETTER_LEVEL[level] <= allowed:
            self._raw(f"{level} ({max(0, self.uptime(now))}) {tag}: {message}")

    def _free_heap(self) -> int:
        used = sum(b.size for b in self.blobs.values())
        if self.client is not None:
            used += self.client.outbox_size() + 6144 + 2 * self.client.settings.buffer_size
        free = max(0, HEAP_TOTAL - used)
        self.min_free_heap = min(self.min_free_heap, free)
        return free


# ---- argument helpers: BAD_ARGS names the field

def _text(body: dict, key: str, *, empty: bool = False) -> str:
    value = body.get(key)
    if not isinstance(value, str) or (not value and not empty):
        raise Err("BAD_ARGS", f"{key} must be a{'' if empty else ' non-empty'} string")
    return value


def _int(body: dict, key: str, low: int, high: int, *, default: int | None = None, where: str = "") -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Err("BAD_ARGS", f"{where}{key} must be an integer from {low} to {high}")
    return value


def _bool(body: dict, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise Err("BAD_ARGS", f"{key} must be true or false")
    return value


def _b64(body: dict, key: str) -> bytes:
    value = body.get(key)
    if not isinstance(value, str):
        raise Err("BAD_ARGS", f"{key} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise Err("BAD_ARGS", f"{key} is not valid base64") from None


def _topic_fields(topic: bytes | None) -> dict:
    if topic is None:
        return {"topic": None, "topic_len": 0}
    try:
        return {"topic": topic.decode("utf-8"), "topic_len": len(topic)}
    except UnicodeDecodeError:
        return {"topic_b64": base64.b64encode(topic).decode(), "topic_len": len(topic)}

