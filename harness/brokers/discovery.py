"""What an external broker supports, found by asking it: CONNACK v5 properties, then probes for 3.1.1-only brokers.

An MQTT 5 broker declares its limits in CONNACK (Maximum QoS, Retain Available, Wildcard / Shared Subscription
Available, Maximum Packet Size, Receive Maximum); those declarations are taken as claims, so a suite test that the
claim enables fails if the broker then misbehaves. A broker that speaks only 3.1.1 declares nothing, so each
capability is probed: the QoS a QoS 2 subscription is granted, whether a wildcard or shared subscription delivers,
whether a retained message is kept. The broker's own version comes from $SYS/broker/version when it publishes one.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from harness.brokers.broker import BrokerError, Capabilities
from harness.client import Client
from harness.core.packets import Publish
from harness.errors import ConnectError, ConnectionClosed, DnsError, HarnessError, TcpError, Timeout
from harness.transport import TlsOptions

SYS_VERSION_TOPIC = "$SYS/broker/version"
# Payload sizes tried, in order, until one is refused or not delivered (a broker may close the connection).
PACKET_PROBE_SIZES = (1024, 64 * 1024, 256 * 1024, 1024 * 1024)


@dataclass
class Discovery:
    capabilities: Capabilities
    version: str = ""  # what the broker says it is ($SYS/broker/version), if it says
    notes: list[str] = field(default_factory=list)  # how each capability was found


async def discover(url: str, *, tls: TlsOptions | None = None, username: str | None = None,
                   password: str | None = None, topic_prefix: str = "mh/discovery/",
                   timeout: float = 5.0) -> Discovery:
    """Capabilities of the broker at `url`. BrokerError (naming the URL and the cause) if it cannot be reached
    with either MQTT version."""
    connect = dict(tls=tls, username=username, password=password, timeout=timeout, log=False)
    errors: dict[str, Exception] = {}
    clients: dict[str, Client] = {}
    for version in ("5", "3.1.1"):
        try:
            clients[version] = await Client.connect(url, version=version, **connect)
        except (DnsError, TcpError) as exc:  # below MQTT: the other version cannot fare better; say it once
            raise BrokerError(f"cannot reach {url}: {exc}") from None
        except (ConnectError, ConnectionClosed, Timeout) as exc:
            errors[version] = exc
    if not clients:
        said = {str(e) for e in errors.values()}
        why = (f"({said.pop()})" if len(said) == 1 else
               f"with MQTT 5 ({errors['5']}) or 3.1.1 ({errors['3.1.1']})")
        raise BrokerError(f"cannot connect to {url} {why}; check the URL, --ca/--cert/--key and "
                          "--username/--password")
    try:
        caps = Capabilities(versions=tuple(v for v in ("3.1.1", "5") if v in clients))
        found = Discovery(caps)
        if "5" in clients:
            _from_connack(clients["5"], found)
        else:
            found.notes.append(f"MQTT 5 refused ({errors['5']}): capabilities probed over MQTT 3.1.1")
            await _probe(clients["3.1.1"], found, topic_prefix, timeout)
        if caps.max_packet_size is None:
            caps.max_packet_size = await _largest_packet(url, connect, max(clients), topic_prefix, timeout)
            found.notes.append(f"largest PUBLISH delivered (probed up to {PACKET_PROBE_SIZES[-1]} B): "
                               f"{caps.max_packet_size} B")
        found.version = await _sys_version(next(iter(clients.values())), timeout)
        return found
    finally:
        for client in clients.values():
            with contextlib.suppress(HarnessError, OSError):
                await client.disconnect(timeout=timeout)


def _from_connack(client: Client, found: Discovery) -> None:
    props = client.connack.properties
    caps = found.capabilities
    # Absent properties mean the spec's defaults: everything available, no limit.
    caps.max_qos = props.get("maximum_qos", 2)
    caps.retain = bool(props.get("retain_available", 1))
    caps.wildcards = bool(props.get("wildcard_subscription_available", 1))
    caps.shared_subscriptions = bool(props.get("shared_subscription_available", 1))
    caps.max_packet_size = props.get("maximum_packet_size")
    caps.receive_maximum = props.get("receive_maximum")
    found.notes.append("capabilities as declared in the MQTT 5 CONNACK")


async def _probe(client: Client, found: Discovery, prefix: str, timeout: float) -> None:
    caps = found.capabilities
    base = f"{prefix}{client.client_id}/"
    suback = await client.subscribe(base + "q", qos=2, timeout=timeout)
    granted = suback.reason_codes[0]
    caps.max_qos = granted if granted <= 2 else 0
    caps.wildcards = await _delivers(client, base + "w/+", base + "w/x", timeout)
    caps.shared_subscriptions = await _delivers(client, f"$share/mh/{base}s", base + "s", timeout)
    await client.publish(base + "r", b"probe", qos=1 if caps.max_qos else 0, retain=True, timeout=timeout)
    caps.retain = await _delivers(client, base + "r", None, timeout)
    if caps.retain:  # clear it: nothing of ours stays on the broker
        await client.publish(base + "r", b"", qos=0, retain=True, timeout=timeout)
    found.notes.append("capabilities probed: granted QoS, wildcard/shared subscription delivery, retained delivery")


async def _delivers(client: Client, topic_filter: str, publish_to: str | None, timeout: float) -> bool:
    """Does a subscription to `topic_filter` deliver (a message published to `publish_to`, or a retained one)?
    A broker may route asynchronously, so a missing delivery is concluded only after `timeout`."""
    suback = await client.subscribe(topic_filter, qos=0, timeout=timeout)
    if suback.reason_codes[0] >= 0x80:
        return False
    expected = publish_to or topic_filter
    if publish_to is not None:
        await client.publish(publish_to, b"probe", timeout=timeout)
    got = False
    with contextlib.suppress(Timeout):
        while not got:
            got = (await client.receive(timeout=timeout)).topic == expected
    await client.unsubscribe(topic_filter, timeout=timeout)
    return got


async def _largest_packet(url: str, connect: dict, version: str, prefix: str, timeout: float) -> int | None:
    """The largest payload size in PACKET_PROBE_SIZES that the broker accepts and delivers back, each on a fresh
    connection (an oversized PUBLISH may cost the connection). None if even the smallest fails."""
    largest = None
    for size in PACKET_PROBE_SIZES:
        try:
            client = await Client.connect(url, version=version, **connect)
        except (ConnectError, ConnectionClosed, Timeout):
            break
        try:
            topic = f"{prefix}{client.client_id}/size"
            await client.subscribe(topic, qos=1, timeout=timeout)
            await client.publish(topic, bytes(size), qos=1, timeout=timeout)
            message = await client.receive(timeout=timeout)
            if len(message.payload) != size:
                break
            largest = size
        except (ConnectionClosed, Timeout, HarnessError):
            break
        finally:
            with contextlib.suppress(HarnessError, OSError):
                await client.close()
    return largest


async def _sys_version(client: Client, timeout: float) -> str:
    with contextlib.suppress(HarnessError):
        suback = await client.subscribe(SYS_VERSION_TOPIC, timeout=timeout)
        if suback.reason_codes[0] < 0x80:
            await client.ping(timeout=timeout)
            while client.pending_messages():
                message: Publish = await client.receive(timeout=timeout)
                if message.topic == SYS_VERSION_TOPIC and message.payload:
                    return message.payload.decode("utf-8", "replace").strip()
    return ""


async def broker_version(url: str, *, tls: TlsOptions | None = None, username: str | None = None,
                         password: str | None = None, timeout: float = 5.0) -> str:
    """What the broker says it is ($SYS/broker/version), or "" if it says nothing."""
    with contextlib.suppress(HarnessError, OSError, asyncio.TimeoutError):
        async with Client(url, version="3.1.1", tls=tls, username=username, password=password, timeout=timeout,
                          log=False) as client:
            return await _sys_version(client, timeout)
    return ""
