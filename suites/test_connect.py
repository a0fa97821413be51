"""CONNECT and CONNACK: acceptance, refusals and their codes, malformed CONNECTs, client identifiers, a second
CONNECT, a first packet that is not CONNECT, session takeover, MQTT 3.1, user names and passwords."""

from __future__ import annotations

import secrets
import string

import pytest

from harness.client import Client
from harness.core.packets import MQTT_5, Connack, Disconnect, Publish, Will
from harness.errors import MqttConnectError
from harness.expect import expect_closed, expect_nothing, expect_packet, received

UNSUPPORTED_LEVEL = 6  # no MQTT version has it: 3.1 is 3, 3.1.1 is 4, 5 is 5
ALPHANUMERIC = string.digits + string.ascii_lowercase + string.ascii_uppercase  # what [MQTT-3.1.3-5] guarantees
# Refusals that are about the credentials, not the packet: 3.1.1 "bad user name or password" / "not authorized",
# MQTT 5 "Bad User Name or Password" / "Not authorized".
CREDENTIAL_REFUSALS = {"3.1.1": (0x04, 0x05), "5": (0x86, 0x87)}


async def raw_client(client_factory, **kwargs) -> Client:
    """A client with an open connection on which nothing was sent yet: the test sends its own first packet."""
    client = await client_factory(connect=False, **kwargs)
    await client.open_raw()
    return client


async def expect_refused(client: Client) -> list[Connack]:
    """The broker closes the connection without accepting the CONNECT: at most one CONNACK, refusing (non-zero
    code, Session Present 0). Returns the CONNACKs received."""
    __tracebackhide__ = True
    await expect_closed(client)
    connacks = received(client, Connack)
    assert len(connacks) <= 1, f"{len(connacks)} CONNACKs on one connection: {connacks}"
    assert all(c.reason_code != 0 for c in connacks), f"the broker accepted the CONNECT: {connacks}"
    assert not any(c.session_present for c in connacks), f"Session Present 1 on a refusal: {connacks}"
    return connacks


async def expect_closed_as_malformed(client: Client) -> None:
    """A CONNECT that breaks section 3.1: 3.1.1 closes without a CONNACK [MQTT-3.1.4-1]; MQTT 5 closes, possibly
    after a CONNACK with an error code (0x80 or above) [MQTT-3.1.4-1, section 4.13]."""
    __tracebackhide__ = True
    connacks = await expect_refused(client)
    if client.version < MQTT_5:
        assert not connacks, f"3.1.1 closes on a malformed CONNECT without sending a CONNACK; got {connacks}"
    else:
        assert all(c.reason_code >= 0x80 for c in connacks), f"a refusal carries an error code >= 0x80: {connacks}"


async def expect_identifier_handled(client: Client) -> Connack:
    """The broker either accepts the client id (CONNACK 0, connection usable) or rejects it the way the spec says:
    3.1.1 with 0x02 (Identifier rejected) [MQTT-3.1.3-9], MQTT 5 with an error code [MQTT-3.1.3-8]; then closes."""
    __tracebackhide__ = True
    connack = await expect_packet(client, Connack)
    if connack.reason_code == 0:
        await client.ping()
        return connack
    if client.version < MQTT_5:
        assert connack.reason_code == 0x02, f"a rejected client id is refused with 0x02, not {connack.reason_code:#x}"
    else:
        assert connack.reason_code >= 0x80, f"a refusal carries an error code >= 0x80, not {connack.reason_code:#x}"
    await expect_refused(client)
    return connack


async def expect_credentials_handled(client: Client, mqtt_version: str) -> None:
    """A well-formed CONNECT with credentials: accepted, or refused for the credentials (never as malformed)."""
    __tracebackhide__ = True
    connack = await expect_packet(client, Connack)
    if connack.reason_code == 0:
        await client.ping()
        return
    assert connack.reason_code in CREDENTIAL_REFUSALS[mqtt_version], (
        f"credentials are accepted or refused as credentials {CREDENTIAL_REFUSALS[mqtt_version]}, "
        f"not with {connack.reason_code:#x}")
    await expect_refused(client)


def unique_suffix() -> str:
    return secrets.token_hex(4)


# ------------------------------------------------------------------------------------------------ acceptance

@pytest.mark.spec(v311=["MQTT-3.2.0-1", "MQTT-3.1.4-4"], v5=["MQTT-3.2.0-1", "MQTT-3.2.0-2", "MQTT-3.1.4-5",
                                                            "MQTT-3.2.2-1"])
async def test_valid_connect_is_acknowledged_once(client_factory):
    client = await client_factory()
    await expect_packet(client, Connack, reason_code=0, reserved_flags=0)  # acknowledge flags bits 7-1 are 0
    await expect_nothing(client, kinds=(Connack, Publish, Disconnect))  # and no second CONNACK


@pytest.mark.v311_only
@pytest.mark.spec(v311="MQTT-3.1.4-4")
async def test_mqtt_3_1_connect_is_accepted(broker, client_factory):
    """Protocol level 3, protocol name "MQIsdp"; only where the broker's profile lists MQTT 3.1."""
    if "3.1" not in broker.capabilities.versions:
        pytest.skip(f"{broker.name} does not list MQTT 3.1 (versions: {', '.join(broker.capabilities.versions)})")
    client = await client_factory(version="3.1")
    assert client.connack.reason_code == 0
    await client.ping()


# ------------------------------------------------------------------------------------------------ refusals

@pytest.mark.spec(v311=["MQTT-3.1.2-2", "MQTT-3.2.2-4", "MQTT-3.2.2-5"], v5=["MQTT-3.1.2-2", "MQTT-3.2.2-6"])
async def test_unsupported_protocol_level_is_refused(client_factory, mqtt_version):
    """3.1.1: CONNACK 0x01 (unacceptable protocol level), then close. MQTT 5: close; the CONNACK (0x84) is
    optional there, and a broker cannot know which CONNACK format a client of an unknown level reads."""
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(protocol_level=UNSUPPORTED_LEVEL))
    if mqtt_version == "3.1.1":
        await expect_packet(client, Connack, reason_code=0x01, session_present=False)
    await expect_refused(client)


@pytest.mark.spec("MQTT-3.1.2-1", "MQTT-3.1.4-1")
async def test_wrong_protocol_name_is_refused(client_factory):
    """The broker must not go on with the CONNECT as MQTT. 3.1.1 also lets it continue under "some other
    specification"; every broker closes, and that is what is checked (no accepting CONNACK, then closed)."""
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(protocol_name="MQTX"))
    await expect_refused(client)


@pytest.mark.v311_only
@pytest.mark.spec(v311=["MQTT-3.1.3-8", "MQTT-3.2.2-4", "MQTT-3.2.2-5"])
async def test_empty_client_id_without_clean_session_is_rejected(client_factory):
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(client_id="", clean=False))
    await expect_packet(client, Connack, reason_code=0x02, session_present=False)
    await expect_refused(client)


@pytest.mark.v311_only
@pytest.mark.spec(v311="MQTT-3.1.4-5")
async def test_packets_after_a_refused_connect_are_not_processed(client_factory, topic):
    watcher = await client_factory(name="watcher")
    await watcher.subscribe(topic + "x")
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(client_id="", clean=False))  # refused: [MQTT-3.1.3-8]
    await client.send(Publish(topic + "x", b"sent after a refused CONNECT"))  # before the CONNACK came back
    connack = await expect_packet(client, Connack)
    if connack.reason_code == 0:
        pytest.skip("the broker accepted the CONNECT it must refuse, so nothing here is after a refusal "
                    "(test_empty_client_id_without_clean_session_is_rejected reports that)")
    await expect_refused(client)
    await expect_nothing(watcher)


# ------------------------------------------------------------------------------------------------ malformed CONNECT

@pytest.mark.spec("MQTT-3.1.2-3", "MQTT-3.1.4-1")
async def test_reserved_connect_flag_closes_the_connection(client_factory):
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(reserved=True))
    await expect_closed_as_malformed(client)


@pytest.mark.spec("MQTT-3.1.4-1", v311="MQTT-3.1.2-14", v5="MQTT-3.1.2-12")
async def test_will_qos_3_closes_the_connection(client_factory, topic):
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(will=Will(topic + "will", b"x", qos=3)))
    await expect_closed_as_malformed(client)


@pytest.mark.parametrize("flag", [
    pytest.param("will_qos", marks=pytest.mark.spec(v311=["MQTT-3.1.2-11", "MQTT-3.1.2-13"], v5="MQTT-3.1.2-11")),
    pytest.param("will_retain", marks=pytest.mark.spec(v311=["MQTT-3.1.2-11", "MQTT-3.1.2-15"], v5="MQTT-3.1.2-13")),
])
@pytest.mark.spec("MQTT-3.1.4-1")
async def test_will_flags_without_will_flag_close_the_connection(client_factory, flag):
    """Will QoS 1 (or Will Retain 1) with Will Flag 0 and no will in the payload."""
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(**{flag: 1}))
    await expect_closed_as_malformed(client)


@pytest.mark.parametrize("field", [
    pytest.param("username", marks=pytest.mark.spec(v311="MQTT-3.1.2-19", v5="MQTT-3.1.2-17")),
    pytest.param("password", marks=pytest.mark.spec(v311="MQTT-3.1.2-21", v5="MQTT-3.1.2-19")),
])
@pytest.mark.spec("MQTT-3.1.4-1")
async def test_credential_flag_without_the_field_closes_the_connection(client_factory, field):
    """The User Name (or Password) Flag is 1 but the payload ends before that field."""
    client = await raw_client(client_factory)
    fields = {"username_flag": True} if field == "username" else {"username": "mh-user", "password_flag": True}
    await client.send(client.connect_packet(**fields))
    await expect_closed_as_malformed(client)


@pytest.mark.v311_only
@pytest.mark.spec(v311=["MQTT-3.1.2-22", "MQTT-3.1.4-1"])
async def test_password_without_username_closes_the_connection(client_factory):
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(password=b"mh-pass"))
    await expect_closed_as_malformed(client)


# ------------------------------------------------------------------------------------------------ credentials

@pytest.mark.parametrize("password", [b"mh-pass", None], ids=["with_password", "without_password"])
@pytest.mark.spec(v311=["MQTT-3.1.2-19", "MQTT-3.1.2-20", "MQTT-3.1.2-21"],
                  v5=["MQTT-3.1.2-17", "MQTT-3.1.2-18", "MQTT-3.1.2-19"])
async def test_user_name_and_password_are_read_as_credentials(broker, client_factory, mqtt_version, password):
    """A broker under test with credentials (--username/--password) must accept them; otherwise these made-up ones
    may be accepted (anonymous access) or refused for the credentials, never treated as a malformed CONNECT."""
    login = broker.login
    username = login.get("username", "mh-user")
    if "username" in login and "password" in login:
        password = login["password"]
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(username=username, password=password))
    await expect_credentials_handled(client, mqtt_version)


@pytest.mark.v5_only
@pytest.mark.spec(v5=["MQTT-3.1.2-16", "MQTT-3.1.2-19"])
async def test_password_without_user_name_is_read_as_credentials(client_factory, mqtt_version):
    """MQTT 5 allows a Password without a User Name (3.1.1 does not)."""
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(password=b"mh-pass"))
    await expect_credentials_handled(client, mqtt_version)


# ------------------------------------------------------------------------------------------------ client identifiers

@pytest.mark.parametrize("length", [1, 23])
@pytest.mark.spec("MQTT-3.1.3-5")
async def test_client_id_of_1_to_23_alphanumerics_is_accepted(client_factory, length):
    client_id = "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))
    client = await client_factory(client_id=client_id)
    assert client.connack.reason_code == 0


@pytest.mark.parametrize("shape", ["long", "punctuation", "non_ascii"])
@pytest.mark.spec(v311="MQTT-3.1.3-9", v5="MQTT-3.1.3-8")
async def test_client_id_beyond_the_guaranteed_set_is_accepted_or_rejected_cleanly(client_factory, shape):
    """Longer ids and other characters are the broker's choice; a rejection must use the rejection code."""
    client_id = {"long": "mh-" + secrets.token_hex(128),  # 259 bytes
                 "punctuation": f"mh id/+#.{unique_suffix()}",
                 "non_ascii": f"mh-ü€𝄞-{unique_suffix()}"}[shape]
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(client_id=client_id))
    await expect_identifier_handled(client)


@pytest.mark.spec(v311=["MQTT-3.1.3-6", "MQTT-3.1.3-9"], v5=["MQTT-3.1.3-6", "MQTT-3.1.3-7", "MQTT-3.1.3-8",
                                                            "MQTT-3.2.2-16"])
async def test_empty_client_id_with_clean_session_is_assigned_an_id_or_rejected(client_factory, mqtt_version):
    """A zero-length client id is the broker's choice (MAY); accepted, MQTT 5 returns the Assigned Client
    Identifier; rejected, it is refused with the rejection code."""
    client = await raw_client(client_factory)
    await client.send(client.connect_packet(client_id="", clean=True))
    connack = await expect_identifier_handled(client)
    if connack.reason_code == 0 and mqtt_version == "5":
        assert connack.properties.get("assigned_client_identifier"), (
            f"no Assigned Client Identifier in the CONNACK: {connack.properties}")


@pytest.mark.v5_only
@pytest.mark.spec(v5="MQTT-3.2.2-16")
async def test_assigned_client_identifiers_are_unique(client_factory):
    assigned = []
    for name in ("first", "second"):
        client = await client_factory(client_id="", name=name, connect=False)
        try:
            await client.open()
        except MqttConnectError as exc:
            pytest.skip(f"the broker rejects zero-length client ids, as it may [MQTT-3.1.3-6]: {exc}")
        assigned.append(client.connack.properties.get("assigned_client_identifier"))
    assert assigned[0] and assigned[1] and assigned[0] != assigned[1], f"assigned client ids: {assigned}"


# ------------------------------------------------------------------------------------------------ protocol violations

@pytest.mark.spec("MQTT-3.1.0-2", v5="MQTT-3.2.0-2")
async def test_second_connect_closes_the_connection(client_factory):
    client = await client_factory()
    await client.send(client.connect_packet())
    await expect_closed(client)
    assert len(received(client, Connack)) == 1, "a CONNACK was sent for the second CONNECT"
    for disconnect in received(client, Disconnect):  # MQTT 5 may say why first
        assert disconnect.reason_code >= 0x80, f"DISCONNECT {disconnect.reason_code:#x} for a protocol error"


@pytest.mark.spec("MQTT-3.1.0-1", v311="MQTT-4.8.0-1", v5=["MQTT-4.13.1-1", "MQTT-3.14.0-1"])
async def test_first_packet_other_than_connect_closes_the_connection(client_factory, topic):
    watcher = await client_factory(name="watcher")
    await watcher.subscribe(topic + "x")
    client = await raw_client(client_factory)
    await client.send(Publish(topic + "x", b"sent before CONNECT"))
    await expect_closed(client)
    assert received(client) == [], "the broker answered a connection that never sent CONNECT"
    await expect_nothing(watcher)  # and the PUBLISH was not delivered


@pytest.mark.spec(v311="MQTT-3.1.4-2", v5="MQTT-3.1.4-3")
async def test_connect_with_a_connected_client_id_closes_the_existing_connection(client_factory):
    first = await client_factory(name="first")
    second = await client_factory(name="second", client_id=first.client_id)
    await expect_closed(first)
    for disconnect in received(first, Disconnect):  # MQTT 5 may tell the old connection why
        assert disconnect.reason_code == 0x8E, f"DISCONNECT {disconnect.reason_code:#x}, not 0x8E Session taken over"
    await second.ping()  # the new connection carries on
