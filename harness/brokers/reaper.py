"""Records of started brokers, and reaping of the ones a dead harness process left behind.

Every backend writes a `Record` into the state dir before it starts a broker and removes it after stopping it.
`reap_leftovers()` (run once per process by the backends and the CLI) stops the brokers of records whose owner
process is gone, removes their run dirs and deletes the records.

Backend protocol: the module `harness.brokers.backends.<record.backend>` provides
    stop_record(record: Record, timeout: float) -> None   # stop what the record describes; gone already is fine
    record_alive(record: Record) -> bool                  # is the broker still running?
Process identity is checked, never assumed: a pid counts as ours only if its start time matches the record, or
its environment carries the instance tag (TAG_ENV=record.id) that the process backend puts on everything it spawns.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from harness.brokers.backends import load_backend
from harness.brokers.broker import BrokerError

STATE_ENV = "MQTT_HARNESS_STATE_DIR"
TAG_ENV = "MQTT_HARNESS_INSTANCE"
# Run dirs are only ever deleted when their name carries this prefix, whatever a record says.
RUN_DIR_PREFIX = "mqtt-harness-"


def state_dir(override: str | os.PathLike | None = None) -> Path:
    """Where records and port reservations live: $MQTT_HARNESS_STATE_DIR, else $XDG_RUNTIME_DIR/mqtt-harness,
    else /tmp/mqtt-harness-<uid>."""
    if override is None:
        override = os.environ.get(STATE_ENV)
    if override is None:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        override = Path(runtime, "mqtt-harness") if runtime else Path(tempfile.gettempdir(), f"mqtt-harness-{os.getuid()}")
    path = Path(override)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def new_run_dir(instance_id: str) -> Path:
    """A fresh private directory for one broker instance (config, logs, data)."""
    return Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{instance_id}-"))


def remove_run_dir(path: str | os.PathLike | None) -> None:
    if path and Path(path).name.startswith(RUN_DIR_PREFIX):
        shutil.rmtree(path, ignore_errors=True)


# ---- process identity (Linux /proc) ----

def start_time(pid: int) -> int | None:
    """Start time of a live process in clock ticks since boot; None if it does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after its closing parenthesis.
    rest = stat[stat.rindex(")") + 2:].split()
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


def is_running(pid: int | None, started: int | None) -> bool:
    """True if `pid` is alive and is the very process that started at `started` (not a reused pid)."""
    return pid is not None and started is not None and start_time(pid) == started


def this_process() -> tuple[int, int]:
    pid = os.getpid()
    started = start_time(pid)
    assert started is not None
    return pid, started


def tagged_pids(instance_id: str) -> list[int]:
    """Live processes whose environment carries TAG_ENV=instance_id (our spawned broker and its children)."""
    needle = f"{TAG_ENV}={instance_id}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:  # gone, or another user's process
            continue
        if needle in environ.split(b"\0") and start_time(int(entry.name)) is not None:
            found.append(int(entry.name))
    return found


def wait_gone(check: Callable[[], bool], timeout: float) -> bool:
    """Poll `check` (true = gone) with a short backoff until it holds or `timeout` passes."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)
    return True


def kill_instance(instance_id: str, pid: int | None, started: int | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL, every process of one instance that is not our child: the recorded leader if its
    start time still matches, plus everything carrying the instance tag."""

    def targets() -> set[int]:
        pids = set(tagged_pids(instance_id))
        if is_running(pid, started):
            pids.add(pid)
        return pids

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        pids = targets()
        if not pids:
            return
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        if wait_gone(lambda: not targets(), wait):
            return
    raise BrokerError(f"processes {sorted(targets())} of broker instance {instance_id} survived SIGKILL")


# ---- records ----

@dataclass
class Record:
    """One started broker, as written to <state dir>/instances/<id>.json."""

    id: str
    name: str
    backend: str
    owner_pid: int
    owner_start: int
    run_dir: str | None = None
    detached: bool = False
    pid: int | None = None
    start_time: int | None = None
    urls: dict[str, str] = field(default_factory=dict)
    log_path: str | None = None
    created: float = field(default_factory=time.time)
    # Backend-specific data (e.g. a container id).
    extra: dict = field(default_factory=dict)

    @classmethod
    def new(cls, instance_id: str, name: str, backend: str, **kwargs) -> "Record":
        owner_pid, owner_start = this_process()
        return cls(id=instance_id, name=name, backend=backend, owner_pid=owner_pid, owner_start=owner_start, **kwargs)

    def owner_alive(self) -> bool:
        return is_running(self.owner_pid, self.owner_start)


def _records_dir(state: Path) -> Path:
    path = state / "instances"
    path.mkdir(exist_ok=True)
    return path


def write_record(record: Record, state: str | os.PathLike | None = None) -> None:
    """Create or update a record (atomically: readers never see half a file)."""
    directory = _records_dir(state_dir(state))
    scratch = directory / f".{record.id}.{os.getpid()}.tmp"
    scratch.write_text(json.dumps(asdict(record), indent=1))
    os.replace(scratch, directory / f"{record.id}.json")


def remove_record(record: Record, state: str | os.PathLike | None = None) -> None:
    (_records_dir(state_dir(state)) / f"{record.id}.json").unlink(missing_ok=True)


def list_records(state: str | os.PathLike | None = None) -> list[Record]:
    records = []
    for path in sorted(_records_dir(state_dir(state)).glob("*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            records.append(Record(**json.loads(path.read_text())))
    return records


@contextlib.contextmanager
def _claim(record: Record, state: Path) -> Iterator[bool]:
    """Exclusive right to tear down one record, so parallel reapers do not both act on it."""
    path = _records_dir(state) / f"{record.id}.json"
    try:
        handle = open(path)
    except FileNotFoundError:
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield path.exists()


def teardown(record: Record, timeout: float = 10.0, state: str | os.PathLike | None = None) -> bool:
    """Stop the broker of a record, delete its run dir and the record. False if someone else is already at it."""
    state = state_dir(state)
    with _claim(record, state) as claimed:
        if not claimed:
            return False
        load_backend(record.backend).stop_record(record, timeout)
        remove_run_dir(record.run_dir)
        remove_record(record, state)
        return True


def reap_leftovers(state: str | os.PathLike | None = None) -> list[Record]:
    """Tear down brokers whose owner died (and detached brokers that died by themselves). Returns what it reaped."""
    reaped = []
    for record in list_records(state):
        if record.owner_alive():
            continue
        try:
            if record.detached and load_backend(record.backend).record_alive(record):
                continue  # left running on purpose by `brokers up --detach`; `brokers down` stops it
            if teardown(record, timeout=5.0, state=state):
                reaped.append(record)
        except BrokerError as exc:  # e.g. docker backend unavailable now: keep the record for a later run
            warnings.warn(f"could not reap leftover broker {record.id} ({record.backend}): {exc}", stacklevel=2)
    return reaped


_reaped: set[str] = set()


def reap_once(state: str | os.PathLike | None = None) -> list[Record]:
    """reap_leftovers(), but only on the first call per state dir in this process."""
    key = str(state_dir(state))
    if key in _reaped:
        return []
    _reaped.add(key)
    return reap_leftovers(state)
