"""The device's CONNECT, as the wire shows it, against what it was configured with; and how it reports a refused
connection."""

from __future__ import annotations

import pytest

from harness.core.packets import Connack, Connect
from harness.proxy import DOWNSTREAM, when

from harness.device.wire import EVENT_TIMEOUT, device_entries, device_sent, start_device, will

pytestmark = [pytest.mark.device, pytest.mark.v311_only]


@pytest.mark.spec("MQTT-3.1.0-1", "MQTT-3.1.3-1", "MQTT-3.1.3-3", "MQTT-3.1.2-19", "MQTT-3.1.2-21")
async def test_first_packet_is_a_connect_carrying_the_configured_fields(dut, wire, device_config, device_client_id):
    mark = dut.mark()
    connected = await start_device(dut, device_config(keepalive=17, username="dut-user", password="dut-pass"))
    first = device_entries(wire)[0].packet
    assert isinstance(first, Connect), f"the device's first packet was {first!r}, not CONNECT"
    assert (first.client_id, first.username, first.password, first.keepalive, first.protocol_level) == \
        (device_client_id, "dut-user", b"dut-pass", 17, 4)
    names = [e.short for e in dut.events_since(mark)]
    assert names[:2] == ["BEFORE_CONNECT", "CONNECTED"], f"event order: {names}"
    assert connected.get("session_present") is False


@pytest.mark.spec("MQTT-3.1.3-3")
async def test_default_client_id_is_esp32_and_the_last_three_mac_bytes(dut, wire, device_config):
    await start_device(dut, device_config(client_id=None))
    mac = dut.info["mac"].split(":")
    expected = f"ESP32_{mac[3].lower()}{mac[4].upper()}{mac[5].upper()}"
    [connect] = device_sent(wire, Connect)
    assert connect.client_id == expected


@pytest.mark.spec("MQTT-3.1.2-4", "MQTT-3.1.2-6")
@pytest.mark.parametrize("persistent", [False, True], ids=["clean", "persistent"])
async def test_clean_session_flag_follows_disable_clean_session(dut, wire, device_config, persistent):
    await start_device(dut, device_config(disable_clean_session=persistent))
    [connect] = device_sent(wire, Connect)
    assert connect.clean is (not persistent), f"disable_clean_session={persistent} sent CleanSession={connect.clean}"


@pytest.mark.spec("MQTT-3.1.2-8", "MQTT-3.1.2-9", "MQTT-3.1.2-14", "MQTT-3.1.2-17")
async def test_configured_will_travels_in_the_connect(dut, wire, device_config, topic):
    await start_device(dut, device_config(last_will=will(topic + "status", b"offline", qos=1, retain=True)))
    [connect] = device_sent(wire, Connect)
    assert connect.will is not None, "the device was configured with a will but its CONNECT has none"
    assert (connect.will.topic, connect.will.payload, connect.will.qos, connect.will.retain) == \
        (topic + "status", b"offline", 1, True)


@pytest.mark.spec("§3.2.2.3")
async def test_refused_connack_is_reported_with_its_return_code(dut, wire, device_config):
    wire.add_rule(when("CONNACK", direction=DOWNSTREAM).rewrite(reason_code=5))
    await dut.aio.init(device_config(disable_auto_reconnect=True))
    mark = dut.mark()
    await dut.aio.start()
    error = await dut.aio.expect_event("ERROR", timeout=EVENT_TIMEOUT, since=mark)
    handle = error.error_handle
    assert handle["error_type"] == "MQTT_ERROR_TYPE_CONNECTION_REFUSED"
    assert handle["connect_return_code"]["name"] == "MQTT_CONNECTION_REFUSE_NOT_AUTHORIZED"
    await dut.aio.expect_event("DISCONNECTED", timeout=EVENT_TIMEOUT, since=mark)
    assert not [e for e in dut.events_since(mark) if e.short == "CONNECTED"]
    assert [p.reason_code for p in wire.tap.packets(DOWNSTREAM, Connack)] == [5]
