"""Docker backend: a broker in a container on the host network, every listener on 127.0.0.1.

The daemon runs without bridges (`dockerd --bridge=none --iptables=false`), so containers always use
network_mode="host" and bind the ports harness.brokers.ports reserved. The rendered config, the PKI directory
(read-only) and a writable data dir are bind-mounted at the paths the broker definition names.

Leftovers are found two ways: the reaper's records (harness.brokers.reaper, like the process backend), and the
labels on every container this backend creates, so even a container whose record is gone is removed
once its owner process is dead.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Iterable

import docker
import docker.errors
import requests

from harness.brokers import definitions as brokerdefs, images

from harness.brokers.broker import Broker, BrokerError, BrokerUnavailable
from harness.brokers.definitions import BrokerDef
from harness.pki import Pki
from harness.brokers.ports import release_ports, reserve_ports
from harness.brokers.probe import tls_args_for, wait_until_ready
from harness.brokers.reaper import (
    Record, is_running, new_run_dir, reap_once, remove_record, remove_run_dir, this_process, write_record,
)

HOST = "127.0.0.1"
LOG_TAIL_LINES = 40

# Container labels. LABEL=1 marks everything this backend creates.
LABEL = images.LABEL
LABEL_OWNER_PID = "mqtt-harness.owner-pid"
LABEL_OWNER_START = "mqtt-harness.owner-start"  # /proc start time: a reused pid is not the owner
LABEL_INSTANCE = "mqtt-harness.instance"
LABEL_RUN = "mqtt-harness.run-id"
LABEL_DETACHED = "mqtt-harness.detached"
LABEL_RUN_DIR = "mqtt-harness.run-dir"  # removed with the container when its record is lost
RUN_ID_ENV = "MQTT_HARNESS_RUN_ID"

def build(defn: BrokerDef) -> images.BuiltImage:
    """`mqtt-harness brokers build NAME`: build (or reuse) the broker's local image."""
    recipe = _local_recipe(defn.docker.image if defn.docker else "") or images.LOCAL_IMAGES.get(defn.name)
    if recipe is None:
        image = defn.docker.image if defn.docker else "(none)"
        raise BrokerError(f"{defn.name} has no local image recipe; its image {image} comes from a registry: "
                          f"`docker pull {image}` on a machine with access, or `docker load` it")
    return images.build_local_image(recipe.name)

def _local_recipe(ref: str) -> images.CopiedBinary | None:
    return next((r for r in images.LOCAL_IMAGES.values() if r.tag == ref), None)

def resolve_image(ref: str, client: docker.DockerClient) -> str:
    """Make `ref` available locally: build it if it is one of ours, else require it to be present (or pullable)."""
    recipe = _local_recipe(ref)
    if recipe is None:
        images.ensure_image(ref, client)
        return ref
    # Checking a local image against the host files costs ~0.1 s: once per process is enough.
    with contextlib.suppress(docker.errors.ImageNotFound):
        if _verified.get(ref) == client.images.get(ref).id:
            return ref
    _verified[ref] = images.build_local_image(recipe.name, client).image_id
    return ref

_verified: dict[str, str] = {}  # local image tag -> id of the image found up to date in this process

def unavailable_reason(defn: BrokerDef, image: str | None = None) -> str | None:
    """Why `defn` cannot run in docker here (with the fix), or None if it can. Never pulls or builds."""
    if defn.docker is None:
        return f"{defn.name} has no docker definition; run it with --backend process"
    ref = image or defn.docker.image
    try:
        client = images.docker_client()
        recipe = _local_recipe(ref)
        if recipe is None:
            images.ensure_image(ref, client, allow_pull=False)
        elif not os.access(recipe.binary, os.X_OK):
            return f"{recipe.binary} is missing, so {ref} cannot be built: {recipe.install_hint}"
    except BrokerUnavailable as exc:
        return str(exc)
    return None

def create(definition: str | BrokerDef, *, listeners: Iterable[str] | None = None, pki: Pki | None = None,
           detached: bool = False, image: str | None = None) -> "DockerBroker":
    return DockerBroker(definition, listeners=listeners, pki=pki, detached=detached, image=image)

def run_id() -> str:
    """Identifies this harness run on container labels: $MQTT_HARNESS_RUN_ID, else one per process."""
    global _run_id
    if _run_id is None:
        _run_id = os.environ.get(RUN_ID_ENV) or secrets.token_hex(6)
    return _run_id

_run_id: str | None = None

class DockerBroker(Broker):
    """One broker container. Listener kinds default to the profile's defaults (TLS kinds only with `pki`).

    `image` overrides the definition's image (e.g. mqtt-harness/mosquitto:local for the mosquitto profile).
    After stop(), `startup_seconds` (container create to first CONNACK) and `teardown_seconds` are set.
    """

    backend = "docker"

    def __init__(self, definition: str | BrokerDef, *, listeners: Iterable[str] | None = None,
                 pki: Pki | None = None, detached: bool = False, image: str | None = None,
                 state: str | os.PathLike | None = None):
        self.definition = brokerdefs.load(definition) if isinstance(definition, str) else definition
        defn = self.definition
        if defn.docker is None:
            raise BrokerUnavailable(f"{defn.name} has no docker definition; run it with --backend process")
        self.name = defn.name
        self.capabilities = defn.capabilities
        self.image = image or defn.docker.image
        self.listeners, self.probe_kind = defn.plan_listeners(listeners, pki)
        self.pki = pki
        self.detached = detached
        self.state = state
        self.ports: dict[str, int] = {}
        self.record: Record | None = None
        self.container_name: str | None = None
        self.startup_seconds: float | None = None
        self.teardown_seconds: float | None = None
        self._client: docker.DockerClient | None = None
        self._container = None
        self._reserved: list[int] = []
        self._final_logs: str | None = None

    def __repr__(self) -> str:
        where = self.urls() if self.ports else "not started"
        return f"<DockerBroker {self.name} image={self.image} container={self.container_name} {where}>"

    def start(self, timeout: float = 30.0) -> None:
        if self.record is not None:
            raise BrokerError(f"{self.name} is already started; create another DockerBroker for a second instance")
        defn, spec = self.definition, self.definition.docker
        reap_once(self.state)
        client = self._client = images.docker_client()
        reap_stale_containers(client)
        resolve_image(self.image, client)  # before anything is allocated: a missing image leaves nothing behind
        instance = f"{self.name}-{secrets.token_hex(4)}"
        self.container_name = f"mqtt-harness-{instance}"
        run_dir = new_run_dir(instance)
        # Recorded before the container exists: a crash from here on leaves a record for the reaper.
        self.record = Record.new(instance, self.name, self.backend, run_dir=str(run_dir), detached=self.detached,
                                 extra={"container": self.container_name, "image": self.image})
        write_record(self.record, self.state)
        try:
            self._reserved = reserve_ports(len(self.listeners) + len(defn.internal_ports), host=HOST, state=self.state)
            self.ports = dict(zip(self.listeners, self._reserved))
            internal = dict(zip(defn.internal_ports, self._reserved[len(self.listeners):]))
            config = brokerdefs.render_config(
                defn, self.ports, pki=self.pki.relocated(spec.certs_path) if self.pki else None,
                data_dir=spec.data_path, instance=instance, host=HOST, internal_ports=internal,
                extra={"run_user": "root", **spec.vars})
            config_path = run_dir / defn.config_file
            config_path.write_text(config)
            data_dir = run_dir / "data"
            data_dir.mkdir()
            os.chmod(data_dir, 0o777)  # the image's user may be anyone; run_dir itself stays private (0700)
            volumes = {str(config_path): {"bind": spec.config_path, "mode": "ro"},
                       str(data_dir): {"bind": spec.data_path, "mode": "rw"}}
            if self.pki is not None:
                user = client.images.get(self.image).attrs.get("Config", {}).get("User")
                volumes[str(_stage_pki(self.pki, run_dir / "certs", image_owner(user)))] = {
                    "bind": spec.certs_path, "mode": "ro"}
            began = time.monotonic()
            self._container = client.containers.create(
                self.image, command=list(spec.command) or None, name=self.container_name, detach=True,
                network_mode="host", volumes=volumes, environment=dict(spec.env), labels=self._labels(instance),
                # A terminal makes the broker's stdout line-buffered, so logs() is current while it runs.
                tty=True)
            self.record.extra["container_id"] = self._container.id
            self.record.urls = self.urls()
            write_record(self.record, self.state)
            self._container.start()
            self._wait_ready(began + timeout, timeout)
            self.startup_seconds = time.monotonic() - began
        except docker.errors.APIError as exc:
            self.stop()
            raise BrokerError(f"docker could not run {self.image}: {exc.explanation or exc}") from None
        except BaseException:
            self.stop()
            raise

    def _labels(self, instance: str) -> dict[str, str]:
        pid, started = this_process()
        return {LABEL: "1", LABEL_OWNER_PID: str(pid), LABEL_OWNER_START: str(started), LABEL_INSTANCE: instance,
                LABEL_RUN: run_id(), LABEL_DETACHED: "1" if self.detached else "0",
                LABEL_RUN_DIR: self.record.run_dir}

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        wait_until_ready(self.urls()[self.probe_kind], deadline, timeout, name=self.name,
                         exit_status=self.exit_status, log_tail=self._log_tail, pause=time.sleep,
                         **tls_args_for(self.probe_kind, self.pki))

    def exit_status(self) -> str | None:
        """None while the container runs, else how it ended."""
        try:
            self._container.reload()
        except docker.errors.NotFound:
            return "container vanished"
        if self._container.status in ("created", "running", "restarting"):
            return None
        code = self._container.attrs.get("State", {}).get("ExitCode")
        return f"container {self._container.status} with exit code {code}"

    def _log_tail(self) -> str:
        lines = self.logs().splitlines()[-LOG_TAIL_LINES:]
        return f"--- last {len(lines)} lines of {self.name}'s container log ---\n" + "\n".join(lines)

    def urls(self) -> dict[str, str]:
        return {kind: brokerdefs.listener_url(self.definition, kind, port, HOST) for kind, port in self.ports.items()}

    def logs(self) -> str:
        """Everything the broker wrote to stdout/stderr (kept after stop())."""
        if self._final_logs is not None:
            return self._final_logs
        if self._container is None:
            return ""
        return _container_logs(self._container)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the container (SIGTERM, SIGKILL after `timeout`), keep its logs and remove it; then release ports,
        run dir and record."""
        if self.record is None:
            return
        began = time.monotonic()
        container = self._container
        if container is None and self._client is not None:
            container = _find_container(self._client, self.container_name)
        if container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                container.stop(timeout=max(1, math.ceil(timeout)))
            with contextlib.suppress(docker.errors.NotFound):
                self._final_logs = _container_logs(container)
            _remove(container)
        self._final_logs = self._final_logs or ""
        release_ports(self._reserved, state=self.state)
        remove_run_dir(self.record.run_dir)
        remove_record(self.record, self.state)
        self.record = None
        self._container = None
        self.teardown_seconds = time.monotonic() - began

def image_owner(user: str | None) -> tuple[int, int] | None:
    """The uid:gid an image's USER runs as, when it is numeric ('' means root); None for a user name, which only
    the image's own /etc/passwd could resolve."""
    user = (user or "").strip()
    if not user:
        return (0, 0)
    uid, _, gid = user.partition(":")
    if uid.isdigit() and (not gid or gid.isdigit()):
        return (int(uid), int(gid or uid))
    return None


def _stage_pki(pki: Pki, directory: Path, owner: tuple[int, int] | None = None) -> str:
    """This broker's own copy of the PKI files, in a directory the container's user can enter (the PKI's own
    directory may be private, e.g. made by mkdtemp). Certificates are 0644; keys are 0600 and, when we can
    (running as root), owned by the container's user. Without root or a known uid the key copy has to be 0644:
    it is this broker's copy of a test key, in this run's directory."""
    from harness.pki import KEY_MODE, SECRET_FILES

    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)  # mkdir's mode is masked by the umask
    can_own = owner is not None and (os.geteuid() == 0 or owner[0] == os.geteuid())
    for path in pki.paths().values():
        target = directory / path.name
        shutil.copyfile(path, target)
        if path.name not in SECRET_FILES:
            os.chmod(target, 0o644)
        elif can_own:
            if os.geteuid() == 0:
                os.chown(target, *owner)
            os.chmod(target, KEY_MODE)
        else:
            os.chmod(target, 0o644)
    return str(directory)

def _container_logs(container) -> str:
    raw = container.logs(stdout=True, stderr=True)
    return raw.decode("utf-8", errors="replace").replace("\r\n", "\n")

def _find_container(client: docker.DockerClient, name_or_id: str | None):
    if not name_or_id:
        return None
    try:
        return client.containers.get(name_or_id)
    except docker.errors.NotFound:
        return None

def _remove(container, timeout: float = 10.0) -> None:
    """Force-remove a container; returns once it is gone, also when a parallel reaper is removing it."""
    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409 or "in progress" not in str(exc):
            raise BrokerError(f"could not remove container {container.name}: {exc.explanation or exc}") from None
        with contextlib.suppress(docker.errors.NotFound):
            container.wait(condition="removed", timeout=timeout)

def reap_stale_containers(client: docker.DockerClient | None = None) -> list[str]:
    """Remove labelled containers whose owner process is dead (detached ones only once they stopped), and their
    run dirs. Returns the names removed. Containers of live harness processes are never touched.
    """
    client = client or images.docker_client()
    removed = []
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}, ignore_removed=True):
        labels = container.labels
        try:
            owner = int(labels[LABEL_OWNER_PID]), int(labels[LABEL_OWNER_START])
        except (KeyError, ValueError):
            continue  # an image build's leftover or a foreign container: not ours to judge
        if is_running(*owner):
            continue
        if labels.get(LABEL_DETACHED) == "1" and container.status == "running":
            continue  # left running on purpose by `brokers up --detach`
        _remove(container)
        remove_run_dir(labels.get(LABEL_RUN_DIR))  # only ever deletes mqtt-harness-* directories
        removed.append(container.name)
    return removed

# ---- harness.brokers.reaper protocol ----

def _record_container(record: Record):
    client = images.docker_client()
    return _find_container(client, record.extra.get("container_id") or record.extra.get("container"))

def stop_record(record: Record, timeout: float) -> None:
    """Remove the container of a recorded instance; gone already is fine."""
    container = _record_container(record)
    if container is not None:
        with contextlib.suppress(docker.errors.NotFound, requests.RequestException):
            container.stop(timeout=max(1, math.ceil(timeout)))
        _remove(container)

def record_alive(record: Record) -> bool:
    container = _record_container(record)
    return container is not None and container.status == "running"

def record_logs(record: Record) -> str:
    """Logs of a recorded instance (for `mqtt-harness brokers logs`)."""
    container = _record_container(record)
    return _container_logs(container) if container is not None else f"(container of {record.id} is gone)\n"
