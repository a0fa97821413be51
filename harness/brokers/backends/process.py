"""Process backend: a broker binary run locally with a rendered config, every listener on 127.0.0.1.

Each instance gets a private run dir (config, log, data), ports from harness.brokers.ports and a record in the state dir
so that harness.brokers.reaper can clean up after a crashed harness. start() returns once a real MQTT CONNACK came back.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

from harness.brokers import definitions as brokerdefs
from harness.brokers.broker import Broker, BrokerError, BrokerUnavailable
from harness.brokers.definitions import BrokerDef
from harness.pki import Pki
from harness.brokers.probe import tls_args_for, wait_until_ready
from harness.brokers.ports import release_ports, reserve_ports
from harness.brokers.reaper import (
    TAG_ENV, Record, is_running, kill_instance, new_run_dir, reap_once, remove_record, remove_run_dir, start_time,
    tagged_pids, write_record,
)

HOST = "127.0.0.1"
LOG_FILE = "broker.log"
# Readiness is probed on the first of these the instance serves (NATS may serve a TLS listener only).

LOG_TAIL_LINES = 40

def find_binary(defn: BrokerDef) -> str:
    """Path of the broker executable; BrokerUnavailable naming the install command if it (or a required file)
    is missing."""
    spec = defn.process
    if spec is None:
        raise BrokerUnavailable(f"{defn.name} has no process definition; run it with --backend docker")
    venv_bin = str(Path(sys.executable).parent)
    candidates = [c.format(venv_bin=venv_bin) for c in spec.binary]
    for candidate in candidates:
        path = candidate if os.sep in candidate else shutil.which(candidate)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            break
    else:
        raise BrokerUnavailable(f"{defn.name}: no executable among {', '.join(candidates)}; install: {spec.install}")
    for required in spec.requires:
        if not (defn.directory / required).exists():
            raise BrokerUnavailable(f"{defn.name}: {defn.directory / required} is missing; install: {spec.install}")
    if spec.min_version:
        _check_version(defn, path)
    return path

def _version_tuple(text: str) -> tuple[int, ...]:
    match = re.search(r"\d+(\.\d+)*", text)
    return tuple(int(n) for n in match.group().split(".")) if match else ()

def _check_version(defn: BrokerDef, path: str) -> None:
    spec = defn.process
    try:
        out = subprocess.run([path, *spec.version_args], capture_output=True, text=True, timeout=30)
        found = _version_tuple(out.stdout + out.stderr)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerUnavailable(f"{defn.name}: cannot run {path} {' '.join(spec.version_args)}: {exc}") from None
    if found < _version_tuple(spec.min_version):
        shown = ".".join(map(str, found)) or "unknown"
        raise BrokerUnavailable(f"{defn.name}: {path} is version {shown}, needs >= {spec.min_version}; "
                                f"install: {spec.install}")

def unavailable_reason(defn: BrokerDef) -> str | None:
    """Why `defn` cannot run as a process here (with the fix), or None if it can."""
    try:
        find_binary(defn)
    except BrokerUnavailable as exc:
        return str(exc)
    return None

def create(definition: str | BrokerDef, *, listeners: Iterable[str] | None = None, pki: Pki | None = None,
           detached: bool = False) -> "ProcessBroker":
    return ProcessBroker(definition, listeners=listeners, pki=pki, detached=detached)

class ProcessBroker(Broker):
    """One broker process. Listener kinds default to the profile's defaults (TLS kinds only when `pki` is given).

    detached=True leaves it running when this process exits (for `brokers up --detach`); the reaper then spares
    it until `brokers down` or until it dies.
    """

    backend = "process"

    def __init__(self, definition: str | BrokerDef, *, listeners: Iterable[str] | None = None,
                 pki: Pki | None = None, detached: bool = False, state: str | os.PathLike | None = None):
        self.definition = brokerdefs.load(definition) if isinstance(definition, str) else definition
        defn = self.definition
        if defn.process is None:
            raise BrokerUnavailable(f"{defn.name} has no process definition; run it with --backend docker")
        self.name = defn.name
        self.capabilities = defn.capabilities
        self.listeners, self.probe_kind = defn.plan_listeners(listeners, pki)
        self.pki = pki
        self.detached = detached
        self.state = state
        self.ports: dict[str, int] = {}  # listener kind -> port
        self.internal_ports: dict[str, int] = {}  # profile's internal_ports (e.g. NATS client port) -> port
        self.run_dir: Path | None = None
        self.record: Record | None = None
        self.startup_seconds: float | None = None  # spawn to first CONNACK
        self._proc: subprocess.Popen | None = None
        self._reserved: list[int] = []
        self._final_logs: str | None = None

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc else None
        return f"<ProcessBroker {self.name} pid={pid} {self.urls() if self.ports else 'not started'}>"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 30.0) -> None:
        if self.record is not None:
            raise BrokerError(f"{self.name} is already started; create another ProcessBroker for a second instance")
        defn, spec = self.definition, self.definition.process
        reap_once(self.state)
        binary = find_binary(defn)
        instance = f"{self.name}-{secrets.token_hex(4)}"
        self.run_dir = new_run_dir(instance)
        log_path = self.run_dir / LOG_FILE
        # Recorded before anything can leak: a crash from here on leaves a record for the reaper.
        self.record = Record.new(instance, self.name, self.backend, run_dir=str(self.run_dir),
                                 detached=self.detached, log_path=str(log_path))
        write_record(self.record, self.state)
        try:
            self._reserved = reserve_ports(len(self.listeners) + len(defn.internal_ports), host=HOST, state=self.state)
            self.ports = dict(zip(self.listeners, self._reserved))
            self.internal_ports = dict(zip(defn.internal_ports, self._reserved[len(self.listeners):]))
            data_dir = self.run_dir / "data"
            data_dir.mkdir()
            config_path = self.run_dir / defn.config_file
            variables = dict(pki=self.pki, data_dir=str(data_dir), instance=instance, host=HOST,
                             internal_ports=self.internal_ports,
                             extra={"run_user": pwd.getpwuid(os.getuid()).pw_name, **spec.vars,
                                    "run_dir": str(self.run_dir), "config": str(config_path),
                                    "broker_dir": str(defn.directory)})
            config_path.write_text(brokerdefs.render_config(defn, self.ports, **variables))
            command = [part.format(binary=binary, config=config_path, run_dir=self.run_dir, broker_dir=defn.directory)
                       for part in spec.command]
            # The tag lets the reaper find this process and anything it spawns (epmd too), even without a pid
            # on record.
            env = {**os.environ, **brokerdefs.render_env(defn, **variables), TAG_ENV: instance}
            began = time.monotonic()
            with open(log_path, "ab") as log:
                self._proc = subprocess.Popen(command, cwd=self.run_dir, env=env, stdin=subprocess.DEVNULL,
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.record.pid = self._proc.pid
            self.record.start_time = start_time(self._proc.pid)
            self.record.urls = self.urls()
            write_record(self.record, self.state)
            self._wait_ready(began + timeout, timeout)
            self.startup_seconds = time.monotonic() - began
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        url = self.urls()[self.probe_kind]
        tls = {**tls_args_for(self.probe_kind, self.pki), **self.credentials}
        def pause(seconds: float) -> None:  # returns early if the process dies
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=seconds)

        wait_until_ready(url, deadline, timeout, name=self.name, exit_status=self.exit_status,
                         log_tail=self._log_tail, pause=pause, **tls)

    def exit_status(self) -> str | None:
        proc = getattr(self, "_proc", None)
        code = None if proc is None else proc.poll()
        return None if code is None else f"exited with code {code}"

    def _log_tail(self) -> str:
        lines = self.logs().splitlines()[-LOG_TAIL_LINES:]
        return f"--- last {len(lines)} lines of {self.name}'s log ---\n" + "\n".join(lines)

    def urls(self) -> dict[str, str]:
        return {kind: brokerdefs.listener_url(self.definition, kind, port, HOST) for kind, port in self.ports.items()}

    def logs(self) -> str:
        """Everything the broker wrote to stdout/stderr (kept after stop())."""
        if self._final_logs is not None:
            return self._final_logs
        if self.record is None or self.record.log_path is None:
            return ""
        try:
            return Path(self.record.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the broker process exits; its exit code, or None if `timeout` passed first."""
        if self._proc is None:
            raise BrokerError(f"{self.name} was not started")
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout`; then release ports, run dir and record."""
        if self.record is None:
            return
        proc = self._proc
        if proc is not None and proc.returncode is None:
            # The leader is our unreaped child until wait() returns, so its group id cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5.0)
        # Children that left the process group still carry the instance tag.
        kill_instance(self.record.id, None, None, timeout=2.0)
        self._final_logs = self.logs()
        release_ports(self._reserved, state=self.state)
        remove_run_dir(self.run_dir)
        remove_record(self.record, self.state)
        self.record = None
        self._proc = None

def stop_record(record: Record, timeout: float) -> None:
    """Reaper protocol: stop the processes of a recorded instance that this process did not start."""
    kill_instance(record.id, record.pid, record.start_time, timeout)

def record_alive(record: Record) -> bool:
    return is_running(record.pid, record.start_time) or bool(tagged_pids(record.id))

