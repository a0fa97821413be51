"""The docker backend against a real daemon: local image build, container start/readiness/logs/stop, leak reaping,
and clean skips for official images that are not on this machine."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import selectors
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import docker.errors
import pytest

from harness.brokers import definitions as brokerdefs, images, reaper
from harness.brokers.backends import docker as docker_backend
from harness.brokers.backends.docker import DockerBroker, reap_stale_containers
from harness.brokers.broker import LISTENER_KINDS, MQTTS, MQTTS_MTLS, BrokerError, BrokerUnavailable
from harness.brokers.ports import port_is_free
from harness.brokers.probe import probe_connack

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent
LOCAL_MOSQUITTO = images.LOCAL_IMAGES["mosquitto"].tag
OFFICIAL_IMAGES = ("eclipse-mosquitto:2", "emqx/emqx:5", "hivemq/hivemq-ce")


@pytest.fixture(scope="module")
def client():
    try:
        return images.docker_client()
    except BrokerUnavailable as exc:
        pytest.skip(str(exc))  # "no docker daemon: run .ci/setup-docker.sh ..."


@pytest.fixture(scope="module")
def local_image(client) -> images.BuiltImage:
    try:
        return images.build_local_image("mosquitto", client)
    except BrokerUnavailable as exc:
        pytest.skip(str(exc))


def labelled(client, instance: str) -> list:
    label = f"{docker_backend.LABEL_INSTANCE}={instance}"
    return client.containers.list(all=True, filters={"label": label}, ignore_removed=True)


def listen_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc shows them) of the TCP sockets listening on `port`, from /proc/net."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of the child's stdout, or fail after `timeout` (the child may hang or die)."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            pytest.fail(f"child wrote nothing within {timeout}s")
    line = proc.stdout.readline().strip()
    assert line, f"child exited with {proc.wait(5)} before reporting its container"
    return line


def start_orphan(state: Path) -> tuple[subprocess.Popen, str]:
    """A child harness process that starts a mosquitto container and then blocks until killed."""
    script = textwrap.dedent(f"""
        import sys
        from harness.brokers.backends.docker import DockerBroker
        broker = DockerBroker("mosquitto", image={LOCAL_MOSQUITTO!r}, state=sys.argv[1])
        broker.start()
        print(broker.record.id, flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(state)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    return proc, read_line(proc, 60)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdin.close()
    proc.stdout.close()


# ---- images ----

def test_local_image_is_cached_and_labelled(client, local_image):
    again = images.build_local_image("mosquitto", client)
    assert not again.built and again.image_id == local_image.image_id
    image = client.images.get(LOCAL_MOSQUITTO)
    with open("/usr/sbin/mosquitto", "rb") as fh:
        assert image.labels[images.LABEL_BINARY] == hashlib.file_digest(fh, "sha256").hexdigest()
    assert image.attrs["Config"]["User"] == "101:101"  # never root
    assert image.attrs["Config"]["Entrypoint"] == ["/usr/sbin/mosquitto"]


def test_missing_host_binary_names_the_install_command(monkeypatch):
    recipe = dataclasses.replace(images.LOCAL_IMAGES["mosquitto"], binary="/nonexistent/sbin/mosquitto")
    monkeypatch.setitem(images.LOCAL_IMAGES, "mosquitto", recipe)
    with pytest.raises(BrokerUnavailable, match=r"/nonexistent/sbin/mosquitto is missing.*apt-get install mosquitto"):
        images.build_local_image("mosquitto")


def test_unknown_recipe_lists_the_buildable_ones():
    with pytest.raises(BrokerError, match="no local image recipe for 'nope'; buildable: mosquitto"):
        images.build_local_image("nope")


def test_no_daemon_says_how_to_start_one(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    with pytest.raises(BrokerUnavailable, match=r"^no docker daemon: run \.ci/setup-docker\.sh .*no-such\.sock"):
        images.docker_client()


# ---- containers ----

def test_mosquitto_container_lifecycle(client, local_image, pki, tmp_path):
    broker = DockerBroker("mosquitto", image=LOCAL_MOSQUITTO, listeners=LISTENER_KINDS, pki=pki, state=tmp_path)
    broker.start()
    try:
        instance, run_dir = broker.record.id, Path(broker.record.run_dir)
        [container] = labelled(client, instance)
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert container.labels[docker_backend.LABEL_OWNER_PID] == str(os.getpid())
        assert container.labels[docker_backend.LABEL_RUN] == docker_backend.run_id()
        assert set(broker.urls()) == set(LISTENER_KINDS)
        for port in broker.ports.values():
            assert listen_addresses(port) == {"0100007F"}, f"port {port} must listen on 127.0.0.1 only"
        # The certificates reached the broker: TLS and mutual-TLS sessions come up.
        probe_connack(broker.url(MQTTS), timeout=5, ca=str(pki.ca))
        probe_connack(broker.url(MQTTS_MTLS), timeout=5, ca=str(pki.ca), cert=str(pki.client_cert),
                      key=str(pki.client_key))
        assert "mosquitto version" in broker.logs() and "running" in broker.logs()
        assert [r.id for r in reaper.list_records(tmp_path)] == [instance]
    finally:
        broker.stop()
    assert labelled(client, instance) == []
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(container.id)
    assert all(port_is_free(port) for port in broker.ports.values())
    assert not run_dir.exists()
    assert reaper.list_records(tmp_path) == []
    assert "terminating" in broker.logs()  # kept after stop, complete up to the broker's exit


def test_broker_that_exits_fails_fast_and_leaves_nothing(client, local_image, tmp_path):
    defn = brokerdefs.load("mosquitto")
    broken = dataclasses.replace(defn, docker=dataclasses.replace(defn.docker, command=("-c", "/nonexistent.conf")))
    broker = DockerBroker(broken, image=LOCAL_MOSQUITTO, state=tmp_path)
    with pytest.raises(BrokerError, match=r"(?s)exit code \d+ before it was ready.*nonexistent\.conf"):
        broker.start(timeout=60)
    assert client.containers.list(all=True, filters={"name": broker.container_name}) == []
    assert reaper.list_records(tmp_path) == []
    assert all(port_is_free(port) for port in broker.ports.values())


def test_absent_image_raises_before_allocating_anything(client, tmp_path):
    broker = DockerBroker("mosquitto", image="mqtt-harness-test/absent:never", state=tmp_path)
    with pytest.raises(BrokerUnavailable, match=r"^image mqtt-harness-test/absent:never is not present locally"):
        broker.start()
    assert broker.record is None and reaper.list_records(tmp_path) == []


# ---- leaks ----

def test_next_run_reaps_container_of_killed_harness(client, local_image, tmp_path):
    proc, instance = start_orphan(tmp_path)
    [container] = labelled(client, instance)
    assert container.status == "running"
    kill(proc)
    # The next run (same state dir) reaps the orphan before starting its own broker.
    broker = DockerBroker("mosquitto", image=LOCAL_MOSQUITTO, state=tmp_path)
    broker.start()
    broker.stop()
    assert labelled(client, instance) == []
    assert reaper.list_records(tmp_path) == []


def test_label_sweep_reaps_orphan_whose_record_is_lost(client, local_image, tmp_path):
    proc, instance = start_orphan(tmp_path)
    assert [c.status for c in labelled(client, instance)] == ["running"]
    assert f"mqtt-harness-{instance}" not in reap_stale_containers(client)  # owner alive: spared
    assert len(labelled(client, instance)) == 1
    kill(proc)
    for record in reaper.list_records(tmp_path):  # as if the state dir had been wiped
        reaper.remove_record(record, tmp_path)
    [run_dir] = [c.labels[docker_backend.LABEL_RUN_DIR] for c in labelled(client, instance)]
    reap_stale_containers(client)  # a parallel test's sweep may get there first: either way it must be gone
    assert labelled(client, instance) == []
    assert not Path(run_dir).exists()


# ---- official images: present, or a clean one-line skip ----

@pytest.mark.parametrize("ref", OFFICIAL_IMAGES)
def test_official_image(client, ref, pki, tmp_path):
    try:
        images.ensure_image(ref, client)
    except BrokerUnavailable as exc:
        reason = str(exc)
        assert "\n" not in reason
        assert reason.startswith(f"image {ref} is not present locally and cannot be pulled (")
        assert reason.endswith(f"run `docker pull {ref}` on a machine with access, or `docker load` it")
        pytest.skip(reason)
    defs = [d for d in brokerdefs.load_all() if d.docker is not None and d.docker.image == ref]
    if not defs:
        pytest.skip(f"image {ref} is present but no broker definition under brokers/ uses it yet")
    broker = DockerBroker(defs[0], pki=pki, state=tmp_path)
    broker.start(timeout=120)
    try:
        probe_connack(broker.url(), timeout=5)
    finally:
        broker.stop()
