"""The process backend against real brokers: start, readiness, logs, stop, the port allocator and leak reaping."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from harness.brokers import definitions as brokerdefs, reaper
from harness.brokers.backends import process
from harness.brokers.backends.process import ProcessBroker
from harness.brokers.probe import probe_connack
from harness.brokers.broker import MQTT, MQTTS, MQTTS_MTLS, BrokerError
from harness.brokers.ports import port_is_free, release_ports, reserve_ports

REPO = Path(__file__).resolve().parent.parent


def instances():
    """(broker, listener kinds) for every process definition: all kinds at once, or one per instance."""
    for defn in brokerdefs.load_all():
        if defn.process is None:
            continue
        if defn.one_listener_per_instance:
            for kind in defn.listeners:
                yield pytest.param(defn.name, (kind,), id=f"{defn.name}-{kind}")
        else:
            yield pytest.param(defn.name, defn.listeners, id=defn.name)


def require(name: str) -> brokerdefs.BrokerDef:
    defn = brokerdefs.load(name)
    reason = process.unavailable_reason(defn)
    if reason:
        pytest.skip(reason)
    return defn


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket `pid` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                addr_hex, port_hex = local.split(":")
                if table == "tcp":
                    addr = ".".join(str(int(addr_hex[i:i + 2], 16)) for i in (6, 4, 2, 0))
                elif int(addr_hex, 16) == 0:
                    addr = "::"
                else:  # ::1 is the loopback too (epmd binds it beside 127.0.0.1); anything else stays hex
                    addr = "127.0.0.1" if addr_hex == "0" * 24 + "01000000" else addr_hex
                found.add((addr, int(port_hex, 16)))
    return found


def read_line(child: subprocess.Popen, timeout: float) -> str:
    """Next line of a child's stdout; fails instead of hanging if the child says nothing. (A reader thread, as
    select() on a buffered pipe misses lines that arrived together.)"""
    lines = getattr(child, "lines", None)
    if lines is None:
        lines = child.lines = queue.Queue()

        def pump():
            for line in child.stdout:
                lines.put(line)
            lines.put("")

        threading.Thread(target=pump, daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        child.kill()
        pytest.fail(f"child wrote nothing within {timeout}s")
    assert line, f"child exited with {child.wait(30)} before reporting"
    return line


@pytest.fixture
def state(tmp_path) -> Path:
    """A private state dir. Whatever a failing test leaves recorded in it is torn down afterwards: no later
    reaper would ever look there."""
    path = tmp_path / "state"
    yield path
    for record in reaper.list_records(path):
        reaper.teardown(record, state=path)


def tls_args(broker: ProcessBroker, kind: str) -> dict:
    if kind == MQTTS:
        return {"ca": str(broker.pki.ca)}
    if kind == MQTTS_MTLS:
        return {"ca": str(broker.pki.ca), "cert": str(broker.pki.client_cert), "key": str(broker.pki.client_key)}
    return {}


@pytest.mark.parametrize("name, kinds", list(instances()))
def test_broker_starts_serves_and_stops_cleanly(name, kinds, pki):
    require(name)
    broker = ProcessBroker(name, listeners=kinds, pki=pki)
    broker.start()
    try:
        pid, run_dir, record_id = broker.pid, broker.run_dir, broker.record.id
        assert set(broker.urls()) == set(kinds)
        # Every MQTT-over-TCP listener answers CONNECT (ws/wss get their round trips with the reference client).
        for kind in (MQTT, MQTTS, MQTTS_MTLS):
            if kind in kinds:
                probe_connack(broker.url(kind), timeout=10, **tls_args(broker, kind), **broker.credentials)
        # Everything it listens on is on the loopback, on the ports it was given (the internal ones included).
        # Every process of the instance counts: RabbitMQ's script runs beam.smp as a child, epmd daemonizes.
        ports = [*broker.ports.values(), *broker.internal_ports.values()]
        listening = set().union(*(listening_sockets(p) for p in {pid, *reaper.tagged_pids(record_id)}))
        assert listening == {("127.0.0.1", port) for port in ports}
        assert broker.logs().strip()
        assert any(r.id == record_id for r in reaper.list_records())
    finally:
        broker.stop()
    assert reaper.start_time(pid) is None
    assert all(port_is_free(port) for port in broker.ports.values())
    assert not run_dir.exists()
    assert all(r.id != record_id for r in reaper.list_records())
    assert broker.logs().strip()  # kept after stop


def test_process_that_exits_early_is_reported_with_its_log(pki):
    defn = require("mosquitto")
    bad = dataclasses.replace(defn, process=dataclasses.replace(
        defn.process, command=defn.process.command + ("--no-such-option",)))
    broker = ProcessBroker(bad, listeners=[MQTT])
    with pytest.raises(BrokerError, match=r"exited with code \d+ before it was ready(.|\n)*no-such-option"):
        broker.start(timeout=30)
    assert broker.record is None and not broker.run_dir.exists()


def test_process_that_never_answers_hits_the_deadline_and_is_killed(state):
    """A process that runs but never speaks MQTT: start() gives up at the deadline and leaves nothing behind."""
    defn = require("mosquitto")
    silent = dataclasses.replace(defn, process=dataclasses.replace(
        defn.process, binary=(sys.executable,),
        command=("{binary}", "-c", "import signal; print('up, but no MQTT here', flush=True); signal.pause()")))
    broker = ProcessBroker(silent, listeners=[MQTT], state=state)
    with pytest.raises(BrokerError, match=r"sent no CONNACK(.|\n)*tcp:") as info:
        broker.start(timeout=1.0)
    assert "up, but no MQTT here" in str(info.value)
    assert broker.record is None and reaper.list_records(state) == []


def test_missing_broker_names_the_install_command():
    defn = brokerdefs.load("nats")
    gone = dataclasses.replace(defn, process=dataclasses.replace(defn.process, binary=("/nonexistent/nats-server",)))
    reason = process.unavailable_reason(gone)
    assert reason and "apt-get install -y --no-install-recommends nats-server" in reason


def test_tls_listener_without_pki_is_refused_up_front():
    with pytest.raises(BrokerError, match="pki="):
        ProcessBroker("mosquitto", listeners=[MQTT, MQTTS])


def test_nats_serves_one_listener_per_instance(pki):
    with pytest.raises(BrokerError, match="one MQTT listener per instance"):
        ProcessBroker("nats", listeners=[MQTT, MQTTS], pki=pki)


# ---- port allocator ----

def test_reserved_ports_are_distinct_across_processes(state):
    """Several processes reserving at once never get the same port."""
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(REPO)!r})
        from harness.brokers.ports import reserve_ports
        print(json.dumps(reserve_ports(25, state={str(state)!r})))
        sys.stdin.read()  # hold the reservations until the test has read all of them
    """)
    children = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for _ in range(4)]
    try:
        got = [json.loads(read_line(child, 30)) for child in children]
    finally:
        for child in children:
            child.stdin.close()
            child.wait(30)
    ports = [p for batch in got for p in batch]
    assert len(ports) == 100 and len(set(ports)) == 100


def test_released_and_orphaned_reservations_are_dropped(state):
    ports = reserve_ports(3, state=state)
    registry = state / "ports"
    assert {int(p.name) for p in registry.iterdir() if p.name.isdigit()} == set(ports)
    release_ports(ports, state=state)
    assert not [p for p in registry.iterdir() if p.name.isdigit()]
    # A reservation whose owner died is pruned on the next reservation.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (registry / "1").write_text(json.dumps({"pid": int(dead.stdout), "start": 1}))
    mine = reserve_ports(1, state=state)
    assert not (registry / "1").exists()
    release_ports(mine, state=state)


# ---- leak reaping ----

CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from harness.brokers.backends.process import ProcessBroker
    broker = ProcessBroker("mosquitto", listeners=["mqtt"], detached=sys.argv[2] == "detached", state=sys.argv[3])
    broker.start()
    print(json.dumps({"pid": broker.pid, "run_dir": str(broker.run_dir), "ports": list(broker.ports.values()),
                      "id": broker.record.id}), flush=True)
    if sys.argv[2] != "detached":
        sys.stdin.read()  # stay up until killed
""")


def start_in_child(state: Path, mode: str) -> tuple[subprocess.Popen, dict]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(REPO), mode, str(state)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return child, json.loads(read_line(child, 60))


def test_reaper_kills_the_broker_of_a_killed_harness(state):
    require("mosquitto")
    child, info = start_in_child(state, "owned")
    child.kill()
    child.wait(30)
    child.stdin.close()
    child.stdout.close()
    assert reaper.start_time(info["pid"]) is not None, "premise: the broker outlived its harness"

    reaped = reaper.reap_leftovers(state)

    assert [r.id for r in reaped] == [info["id"]]
    assert reaper.start_time(info["pid"]) is None
    assert not Path(info["run_dir"]).exists()
    assert all(port_is_free(p) for p in info["ports"])
    assert reaper.list_records(state) == []


def test_reaper_spares_a_detached_broker_until_it_is_torn_down(state):
    require("mosquitto")
    child, info = start_in_child(state, "detached")
    assert child.wait(30) == 0
    child.stdout.close()
    child.stdin.close()
    try:
        assert reaper.reap_leftovers(state) == []
        assert reaper.start_time(info["pid"]) is not None
        probe_connack(f"mqtt://127.0.0.1:{info['ports'][0]}", timeout=10)
    finally:
        [record] = reaper.list_records(state)
        assert reaper.teardown(record, state=state)
    assert reaper.start_time(info["pid"]) is None
    assert not Path(info["run_dir"]).exists()


def test_reaper_never_kills_a_process_that_merely_reuses_a_recorded_pid(state):
    """A record whose pid now belongs to another process (start time differs) must not get that process killed."""
    bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        real_start = reaper.start_time(bystander.pid)
        record = reaper.Record(id="mosquitto-deadbeef", name="mosquitto", backend="process",
                               owner_pid=int(dead.stdout), owner_start=1, pid=bystander.pid,
                               start_time=real_start - 1)
        reaper.write_record(record, state)

        assert [r.id for r in reaper.reap_leftovers(state)] == [record.id]
        assert bystander.poll() is None and reaper.start_time(bystander.pid) == real_start
    finally:
        bystander.send_signal(signal.SIGTERM)
        bystander.wait(30)


# ---- CLI ----

def cli(state: Path, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, reaper.STATE_ENV: str(state)}
    return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=REPO, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_cli_detached_broker_shows_logs_and_goes_down(state):
    require("mosquitto")
    out, err = cli(state, "brokers", "up", "mosquitto", "--detach", "--listeners", "mqtt").communicate(timeout=60)
    assert "mqtt://127.0.0.1:" in out, err
    url = next(word for word in out.split() if word.startswith("mqtt://"))
    [record] = reaper.list_records(state)
    try:
        probe_connack(url, timeout=10)
        out, _ = cli(state, "brokers", "logs", "mosquitto").communicate(timeout=60)
        assert "mosquitto version" in out
    finally:
        down = cli(state, "brokers", "down", "mosquitto")
        out, err = down.communicate(timeout=60)
    assert down.returncode == 0 and "stopped mosquitto" in out, err
    assert reaper.start_time(record.pid) is None and reaper.list_records(state) == []
    again = cli(state, "brokers", "down", "mosquitto")
    _, err = again.communicate(timeout=60)
    assert again.returncode == 1 and "no detached mosquitto is running" in err


def test_cli_foreground_broker_stops_on_ctrl_c(state):
    require("nats")
    up = cli(state, "brokers", "up", "nats")
    try:
        while "Press Ctrl-C" not in (line := read_line(up, 60)):
            pass
        [record] = reaper.list_records(state)
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0, up.stderr.read()
    finally:
        if up.poll() is None:
            up.kill()
    assert reaper.start_time(record.pid) is None and reaper.list_records(state) == []


def test_cli_certs_writes_the_set_and_readme(tmp_path):
    out, err = cli(tmp_path, "certs", str(tmp_path / "pki")).communicate(timeout=60)
    assert "README.md" in out, err
    assert (tmp_path / "pki" / "ca.pem").is_file() and (tmp_path / "pki" / "README.md").is_file()


def test_cli_unknown_broker_is_a_one_line_error(state):
    proc = cli(state, "brokers", "up", "no-such-broker")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "no broker definition 'no-such-broker'; known:" in err
