"""Docker images of brokers under test: build local ones from host binaries, find official ones.

CI has no registry access, so the local mosquitto image is assembled FROM scratch out of the host's
own binary and every shared object ldd lists for it. Official images (eclipse-mosquitto, emqx,
hivemq-ce) must already be present; the harness never substitutes another broker for a missing one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import requests

from harness.brokers.broker import BrokerError, BrokerUnavailable

# Label keys put on images (and containers, see harness.brokers.backends.docker) the harness made.
LABEL = "mqtt-harness"
LABEL_CONTEXT = "mqtt-harness.context-sha256"
LABEL_BINARY = "mqtt-harness.binary-sha256"

# Set to 1 to let the harness ask the daemon to pull a missing official image.
PULL_ENV = "MQTT_HARNESS_DOCKER_PULL"
# How to get a daemon; starts every "no daemon" error.
NO_DAEMON = "no docker daemon: run .ci/setup-docker.sh (or `dockerd --bridge=none --iptables=false &` as root)"


@dataclass(frozen=True)
class CopiedBinary:
    """A local image made of one host binary, its shared objects and a few config files."""

    name: str
    binary: str
    install_hint: str
    uid: int = 101
    gid: int = 101
    # Default arguments, following the official image's layout so one broker definition fits both.
    cmd: tuple[str, ...] = ()
    # Host file -> path in the image; copied when present on the host.
    extra_files: dict[str, str] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"mqtt-harness/{self.name}:local"


LOCAL_IMAGES: dict[str, CopiedBinary] = {
    "mosquitto": CopiedBinary(
        name="mosquitto",
        binary="/usr/sbin/mosquitto",
        install_hint="apt-get install mosquitto",
        cmd=("-c", "/mosquitto/config/mosquitto.conf"),
        # Same OpenSSL defaults as the native broker, so both backends negotiate TLS alike.
        extra_files={"/usr/lib/ssl/openssl.cnf": "/usr/lib/ssl/openssl.cnf"},
    ),
}


@dataclass(frozen=True)
class BuiltImage:
    """Outcome of build_local_image(): built=False means an up-to-date image was reused."""

    tag: str
    image_id: str
    built: bool
    seconds: float
    size_bytes: int


def docker_client(timeout: float = 30.0) -> docker.DockerClient:
    """A client for the local daemon (API version negotiated), or BrokerUnavailable saying how to start one."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BrokerUnavailable(f"{NO_DAEMON}; {where}: {cause}") from None
    return client


def shared_objects(binary: str) -> list[str]:
    """Absolute paths of every shared object `ldd` resolves for binary, the dynamic loader included."""
    proc = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        if "not a dynamic executable" in proc.stdout + proc.stderr:
            return []
        raise BrokerError(f"ldd {binary} failed: {(proc.stderr or proc.stdout).strip()}")
    paths, missing = [], []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if "=> not found" in line:
            missing.append(line.split()[0])
            continue
        # "libx.so.1 => /lib/.../libx.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"; vdso has no file.
        match = re.match(r"(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)$", line)
        if match:
            paths.append(match.group(1))
    if missing:
        raise BrokerError(f"{binary} needs shared objects the host lacks: {', '.join(missing)}")
    return paths


def _write_context(recipe: CopiedBinary, context: Path) -> str:
    """Lay out the build context; returns a digest of everything in it (the cache key)."""
    rootfs = context / "rootfs"
    files = {recipe.binary: recipe.binary}
    files.update({path: path for path in shared_objects(recipe.binary)})
    files.update({src: dst for src, dst in recipe.extra_files.items() if os.path.exists(src)})
    # A name for the image's uid/gid; nothing else in the image looks accounts up.
    user = f"root:x:0:0:root:/:/nonexistent\n{recipe.name}:x:{recipe.uid}:{recipe.gid}:{recipe.name}:/:/nonexistent\n"
    group = f"root:x:0:\n{recipe.name}:x:{recipe.gid}:\n"
    dockerfile = (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        f"USER {recipe.uid}:{recipe.gid}\n"
        f"ENTRYPOINT {json.dumps([recipe.binary])}\n"
        + (f"CMD {json.dumps(list(recipe.cmd))}\n" if recipe.cmd else "")
    )
    digest = hashlib.sha256(dockerfile.encode())
    for src, dst in sorted(files.items(), key=lambda item: item[1]):
        target = rootfs / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)  # dereferences symlinks: the image gets real files at ldd's paths
        os.chmod(target, 0o755 if os.access(src, os.X_OK) else 0o644)
        digest.update(dst.encode() + b"\0" + target.read_bytes())
    for name, text in (("passwd", user), ("group", group)):
        (rootfs / "etc").mkdir(parents=True, exist_ok=True)
        (rootfs / "etc" / name).write_text(text)
        digest.update(name.encode() + b"\0" + text.encode())
    (context / "Dockerfile").write_text(dockerfile)
    return digest.hexdigest()


def _file_sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def build_local_image(name: str, client: docker.DockerClient | None = None, force: bool = False) -> BuiltImage:
    """Build (or reuse) the local image for broker `name`, e.g. mosquitto -> mqtt-harness/mosquitto:local.

    Reuses the tagged image when its context digest label matches the host's binary and libraries;
    `force` rebuilds anyway.
    """
    recipe = LOCAL_IMAGES.get(name)
    if recipe is None:
        raise BrokerError(f"no local image recipe for {name!r}; buildable: {', '.join(sorted(LOCAL_IMAGES))}")
    if not os.access(recipe.binary, os.X_OK):
        raise BrokerUnavailable(f"{recipe.binary} is missing, so {recipe.tag} cannot be built: {recipe.install_hint}")
    client = client or docker_client()
    started = time.monotonic()
    # One builder per image at a time (parallel test workers share the daemon).
    lock_path = Path(tempfile.gettempdir()) / f"mqtt-harness-image-{name}.lock"
    with open(lock_path, "w") as lock, tempfile.TemporaryDirectory(prefix=f"mqtt-harness-{name}-image-") as tmp:
        fcntl.flock(lock, fcntl.LOCK_EX)
        digest = _write_context(recipe, Path(tmp))
        old = _get_image(client, recipe.tag)
        if old is not None and old.labels.get(LABEL_CONTEXT) == digest and not force:
            return BuiltImage(recipe.tag, old.id, False, time.monotonic() - started, old.attrs.get("Size", 0))
        labels = {LABEL: "1", LABEL_CONTEXT: digest, LABEL_BINARY: _file_sha256(recipe.binary)}
        try:
            image, _ = client.images.build(
                path=tmp, tag=recipe.tag, labels=labels, rm=True, forcerm=True, pull=False, nocache=force
            )
        except docker.errors.BuildError as exc:
            lines = (str(chunk.get("stream", chunk.get("error", ""))).strip() for chunk in exc.build_log)
            tail = " | ".join(line for line in lines if line)[-400:]
            raise BrokerError(f"building {recipe.tag} failed: {exc.msg} ({tail})") from None
        except docker.errors.APIError as exc:
            raise BrokerError(f"building {recipe.tag} failed: {exc.explanation or exc}") from None
    if old is not None and old.id != image.id:
        _remove_untagged(client, old.id)
    return BuiltImage(recipe.tag, image.id, True, time.monotonic() - started, image.attrs.get("Size", 0))


def _get_image(client: docker.DockerClient, ref: str):
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None


def _remove_untagged(client: docker.DockerClient, image_id: str) -> None:
    """Drop the image a rebuild replaced, unless something still uses it."""
    try:
        client.images.remove(image_id, noprune=False)
    except docker.errors.APIError:
        pass  # still used by a container (or already gone): leave it


def ensure_image(ref: str, client: docker.DockerClient | None = None, *, allow_pull: bool | None = None,
                 pull_timeout: float = 3.0):
    """The local image `ref`, pulled first only if pulls are allowed and the registry answers fast.

    Pulls are off unless allow_pull or MQTT_HARNESS_DOCKER_PULL=1: a pull makes the daemon reach the
    internet, which CI machines forbid. Raises BrokerUnavailable with one line naming the fix.
    """
    client = client or docker_client()
    image = _get_image(client, ref)
    if image is not None:
        return image
    if allow_pull is None:
        allow_pull = os.environ.get(PULL_ENV) == "1"
    reason = "no registry access"
    if not allow_pull:
        reason += f"; {PULL_ENV}=1 lets the harness try"
    else:
        try:
            _pull(client, ref, pull_timeout)
            return client.images.get(ref)
        except (docker.errors.DockerException, requests.RequestException):
            pass
    raise BrokerUnavailable(
        f"image {ref} is not present locally and cannot be pulled ({reason}): "
        f"run `docker pull {ref}` on a machine with access, or `docker load` it"
    )


def _pull(client: docker.DockerClient, ref: str, probe_timeout: float) -> None:
    # Ask the registry for the manifest with a short HTTP timeout first so an unreachable registry
    # fails in seconds; only then start the (possibly long) download.
    probe = docker.from_env(version=client.api.api_version, timeout=probe_timeout)
    try:
        probe.api.inspect_distribution(ref)
    finally:
        probe.close()
    client.images.pull(ref)
