"""TLS authentication on the listener that requires client certificates (mqtts-mtls).

The MQTT specifications tag no normative statement for TLS: chapter 5 (Security) is non-normative in both
versions. The tests cite its sections, numbered alike in 3.1.1 and 5: §5.4.1 "Authentication of Clients by the
Server" (TLS client certificates) and §5.4.3 "Authentication of the Server by the Client" (the server
certificate, checked against the CA and the host name).

A refused client must be refused in the TLS layer, before any MQTT: a broker that completes TLS and refuses only
in MQTT has let an unauthenticated peer talk MQTT to it. With TLS 1.3 the server checks the client certificate
after the client's side of the handshake, and some servers then drop the connection without an alert (Node.js,
so aedes), which to a client that sent CONNECT looks like an MQTT-level close. So each refusal is checked twice:
a bare TLS connection that sends no MQTT byte must be closed by the broker (it cannot be waiting for a CONNECT),
and the reference client, which sends CONNECT, must get no CONNACK.
"""

from __future__ import annotations

import dataclasses

import pytest

from harness.brokers.broker import MQTTS_MTLS
from harness.client import Client
from harness.core.packets import Connack, Publish
from harness.errors import ConnectError, ConnectionClosed, Timeout, TlsError
from harness.expect import expect_packet
from harness.packet_log import IN
from harness.transport import open_stream
from harness.url import parse_url

pytestmark = pytest.mark.requires(mtls=True)

WRONG_HOST = "wrong.example"  # not in the server certificate; never resolved: we connect by the URL's address


async def expect_refused_in_tls(client_factory, broker, cert: str | None) -> None:
    """The mTLS listener refuses a client presenting `cert` in the TLS layer, and never answers its CONNECT."""
    tls = broker.tls(MQTTS_MTLS, cert=cert)
    try:
        stream = await open_stream(parse_url(broker.url(MQTTS_MTLS)), tls=tls, timeout=client_factory.timeout)
    except TlsError:
        pass  # refused within the handshake
    else:
        try:
            data = await stream.read(timeout=client_factory.timeout)
        except ConnectionClosed:  # TlsConnectionClosed too: the server's alert about our certificate
            data = b""
        except Timeout:
            pytest.fail("the broker completed the TLS handshake and then waited for MQTT: it did not refuse the "
                        f"client certificate ({cert or 'none'}) in TLS")
        finally:
            stream.abort()
        assert not data, f"the broker sent {data!r} although we sent nothing"
    client = await client_factory(MQTTS_MTLS, cert=cert, connect=False)
    with pytest.raises(ConnectError):
        await client.open()
    assert_no_connack(client)


def assert_no_connack(client: Client) -> None:
    connacks = [e.packet for e in client.log.entries if e.direction == IN and isinstance(e.packet, Connack)]
    assert client.connack is None and not connacks, f"refused in TLS, yet the broker sent {connacks[0]}"


async def expect_verification_failure(client: Client) -> TlsError:
    """Opening `client` fails because the server certificate does not verify; returns the error."""
    with pytest.raises(TlsError, match="certificate verification failed") as failure:
        await client.open()
    assert_no_connack(client)
    return failure.value


async def round_trip(client: Client, topic: str) -> None:
    """The connection carries MQTT: a message to ourselves comes back."""
    await client.subscribe(topic, qos=1)
    await client.publish(topic, b"over mTLS", qos=1)
    await expect_packet(client, Publish, topic=topic, payload=b"over mTLS")


@pytest.mark.spec("§5.4.1")
async def test_client_with_trusted_certificate_is_accepted(client_factory, topic):
    client = await client_factory(MQTTS_MTLS, cert="client")
    assert client.connack.reason_code == 0
    await round_trip(client, topic + "mtls")


@pytest.mark.spec("§5.4.1")
async def test_client_without_certificate_is_refused(client_factory, broker):
    await expect_refused_in_tls(client_factory, broker, None)


@pytest.mark.spec("§5.4.1")
async def test_client_certificate_from_untrusted_ca_is_refused(client_factory, broker):
    await expect_refused_in_tls(client_factory, broker, "client_untrusted")


@pytest.mark.spec("§5.4.1")
async def test_expired_client_certificate_is_refused(client_factory, broker):
    await expect_refused_in_tls(client_factory, broker, "client_expired")


@pytest.mark.spec("§5.4.3")
async def test_server_certificate_verifies_against_the_ca(client_factory, broker, topic):
    tls = broker.tls(MQTTS_MTLS, cert="client")
    # The defaults verify the chain and the host name; this test relies on both being on.
    assert not (tls.insecure_no_verify or tls.insecure_skip_hostname_check)
    client = await client_factory(MQTTS_MTLS, tls=tls)
    await round_trip(client, topic + "verified")


@pytest.mark.spec("§5.4.3")
async def test_server_certificate_fails_verification_against_another_ca(client_factory, broker, pki):
    tls = dataclasses.replace(broker.tls(MQTTS_MTLS, cert="client"), ca=str(pki.unknown_ca))
    client = await client_factory(MQTTS_MTLS, tls=tls, connect=False)
    await expect_verification_failure(client)


@pytest.mark.spec("§5.4.3")
async def test_server_certificate_does_not_cover_another_host_name(client_factory, broker):
    tls = dataclasses.replace(broker.tls(MQTTS_MTLS, cert="client"), server_hostname=WRONG_HOST)
    client = await client_factory(MQTTS_MTLS, tls=tls, connect=False)
    error = await expect_verification_failure(client)
    assert WRONG_HOST in str(error)
