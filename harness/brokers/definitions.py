"""Broker definitions: the folders under brokers/, and rendering a broker's config for given ports and certs.

A folder brokers/<name>/ holds
    broker.yaml                    profile: product, capabilities, known limits, listener kinds, how to run it
    config/<file>                  base config template; `$listeners` marks where the listener blocks go
    config/listener-<kind><ext>    one template per supported listener kind (<ext> = the suffix of <file>)
A broker.yaml with `extends: <other>` is a variant: the other's fields (top-level mappings merged one level deep)
and, unless it has its own config/, the other's templates.
Templates use string.Template syntax (`$name`, `$$` for a literal dollar). Variables:
    $host $port $kind              in listener templates: address, port and kind of that listener
    $listeners                     in the base template: the rendered listener blocks
    $port_<name>                   each of the profile's internal_ports (e.g. NATS's client port)
    $data_dir $instance $run_user  broker data dir, unique instance name, OS user the broker should run as
    $ca $server_cert ... $store_password   every file of harness.pki.Pki by attribute name (TLS kinds need them)
    plus the backend's `vars` from the profile (e.g. docker: run_user: mosquitto)
Backends render the same templates with their own paths: the process backend with host paths, the docker backend
with `pki.relocated(docker.certs_path)` and `data_dir=docker.data_path`.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import yaml

from harness.brokers.broker import LISTENER_KINDS, MQTT, MQTTS, MQTTS_MTLS, WS, WSS, BrokerError, Capabilities
from harness.pki import Pki

BROKERS_DIR = Path(__file__).resolve().parents[2] / "brokers"
TLS_KINDS = (MQTTS, MQTTS_MTLS, WSS)
PROBE_KINDS = (MQTT, MQTTS, MQTTS_MTLS)  # listener kinds a readiness probe can use (a CONNECT without WebSocket)
SCHEMES = {MQTT: "mqtt", MQTTS: "mqtts", MQTTS_MTLS: "mqtts", WS: "ws", WSS: "wss"}
# Rendered last: brokers that open listeners one by one then serve the plain one last, so a CONNACK there
# means every listener is up.
RENDER_ORDER = (MQTTS, MQTTS_MTLS, WS, WSS, MQTT)
# Characters no config format here can carry unquoted in a path.
_UNSAFE_PATH = re.compile(r"""[\s"'\\$`{}#;]""")


@dataclass(frozen=True)
class KnownLimit:
    """A documented deviation of the broker: shown as xfail for the test or statement `id`."""

    id: str
    reason: str
    ref: str


@dataclass(frozen=True)
class ProcessSpec:
    """How to run the broker as a local process."""

    binary: tuple[str, ...]  # candidates: absolute paths, "{venv_bin}/x", or names looked up on PATH
    command: tuple[str, ...]  # format fields: {binary} {config} {run_dir} {broker_dir}
    install: str  # the exact command(s) that make it available
    requires: tuple[str, ...] = ()  # files relative to the broker folder (e.g. node_modules/...)
    # Oldest usable version: `binary *version_args` must print a version >= min_version ("" = no check).
    min_version: str = ""
    version_args: tuple[str, ...] = ("--version",)
    # Values are templates with the config's variables (e.g. $port_dist, $data_dir, $run_dir, $config).
    env: Mapping[str, str] = field(default_factory=dict)
    vars: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DockerSpec:
    """How to run the broker in a container (host networking; certs bind-mounted read-only)."""

    image: str
    config_path: str  # where the rendered config file is mounted
    certs_path: str  # where the PKI directory is mounted
    data_path: str  # writable data dir inside the container
    install: str  # how to get the image onto this machine (no registry pulls here: build it)
    command: tuple[str, ...] = ()  # container command; empty = the image's default
    env: Mapping[str, str] = field(default_factory=dict)
    vars: Mapping[str, str] = field(default_factory=dict)
    notes: str = ""


@dataclass(frozen=True)
class BrokerDef:
    name: str
    directory: Path
    display_name: str
    product: str
    capabilities: Capabilities
    listeners: tuple[str, ...]  # kinds this broker can serve
    default_listeners: tuple[str, ...]
    required_listeners: tuple[str, ...]  # kinds every instance must serve
    one_listener_per_instance: bool
    internal_ports: tuple[str, ...]  # non-MQTT ports the broker must be told (bound to the same host)
    config_file: str
    listener_separator: str
    ws_path: str
    known_limits: tuple[KnownLimit, ...]
    references: tuple[str, ...]  # vendor docs the profile and templates follow
    # username/password every client must send (e.g. ejabberd refuses a CONNECT without a password); the
    # readiness probe logs in with them. Empty: anonymous.
    credentials: Mapping[str, str]
    process: ProcessSpec | None
    docker: DockerSpec | None

    def template(self, part: str) -> string.Template:
        path = self.directory / "config" / part
        try:
            return string.Template(path.read_text())
        except FileNotFoundError:
            raise BrokerError(f"{self.name}: template {path} is missing") from None

    def listener_template(self, kind: str) -> string.Template:
        return self.template(f"listener-{kind}{Path(self.config_file).suffix}")

    def plan_listeners(self, listeners, pki) -> tuple[tuple[str, ...], str]:
        """The listener kinds an instance serves (default: the profile's, TLS ones only with a PKI), checked,
        and the kind its readiness probe uses. Raises BrokerError naming the fix."""
        if listeners is None:
            listeners = [k for k in self.default_listeners if pki is not None or k not in TLS_KINDS]
        listeners = tuple(listeners)
        self.check_listeners(listeners)
        probe = [k for k in PROBE_KINDS if k in listeners]
        if not probe:
            raise BrokerError(f"{self.name}: readiness needs an mqtt, mqtts or mqtts-mtls listener; add 'mqtt'")
        if set(listeners) & set(TLS_KINDS) and pki is None:
            raise BrokerError(f"{self.name}: TLS listeners need certificates; pass pki=harness.pki.generate_pki(dir)")
        return listeners, probe[0]

    def check_listeners(self, kinds: list[str] | tuple[str, ...]) -> None:
        """Raise BrokerError unless this broker can serve exactly these listener kinds in one instance."""
        unknown = [k for k in kinds if k not in LISTENER_KINDS]
        if unknown:
            raise BrokerError(f"unknown listener kind(s) {unknown}; known: {', '.join(LISTENER_KINDS)}")
        unsupported = [k for k in kinds if k not in self.listeners]
        if unsupported:
            raise BrokerError(f"{self.name} cannot serve {unsupported}; it supports {', '.join(self.listeners)}")
        missing = [k for k in self.required_listeners if k not in kinds]
        if missing:
            raise BrokerError(f"{self.name} needs a {', '.join(missing)} listener in every instance; add it")
        if self.one_listener_per_instance and len(kinds) != 1:
            raise BrokerError(f"{self.name} serves one MQTT listener per instance; start one instance per kind "
                              f"instead of {list(kinds)}")
        if len(set(kinds)) != len(kinds) or not kinds:
            raise BrokerError(f"listener kinds must be distinct and not empty, got {list(kinds)}")


def names() -> list[str]:
    """Names of every broker definition under brokers/."""
    return sorted(p.parent.name for p in BROKERS_DIR.glob("*/broker.yaml"))


def load(name: str) -> BrokerDef:
    """Read brokers/<name>/broker.yaml."""
    directory = BROKERS_DIR / name
    path = directory / "broker.yaml"
    if not path.is_file():
        raise BrokerError(f"no broker definition {name!r}; known: {', '.join(names())}")
    raw = yaml.safe_load(path.read_text())
    if "extends" in raw:  # a variant of another definition: its fields and config templates, overridden
        base = load(raw["extends"])
        base_raw = yaml.safe_load((base.directory / "broker.yaml").read_text())
        merged = dict(base_raw)
        for key, value in raw.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            elif key != "extends":
                merged[key] = value
        raw = merged
        if not (directory / "config").is_dir():
            directory = base.directory
    try:
        return _parse(name, directory, raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise BrokerError(f"{path}: invalid definition ({exc!r})") from exc


def load_all() -> list[BrokerDef]:
    return [load(n) for n in names()]


def _parse(name: str, directory: Path, raw: dict) -> BrokerDef:
    limits = tuple(KnownLimit(id=k, reason=v["reason"], ref=v["ref"]) for k, v in (raw.get("known_limits") or {}).items())
    caps = Capabilities(
        versions=tuple(str(v) for v in raw["versions"]),
        max_qos=int(raw["max_qos"]),
        retain=bool(raw["retain"]),
        wildcards=bool(raw["wildcards"]),
        shared_subscriptions=bool(raw["shared_subscriptions"]),
        max_packet_size=raw.get("max_packet_size"),
        receive_maximum=raw.get("receive_maximum"),
        known_limits={lim.id: f"{lim.reason} ({lim.ref})" for lim in limits},
    )
    listeners = tuple(raw["listeners"])
    proc = raw.get("process")
    dock = raw.get("docker")
    return BrokerDef(
        name=name,
        directory=directory,
        display_name=raw["display_name"],
        product=raw["product"],
        capabilities=caps,
        listeners=listeners,
        default_listeners=tuple(raw.get("default_listeners", listeners)),
        required_listeners=tuple(raw.get("required_listeners", ())),
        one_listener_per_instance=bool(raw.get("one_listener_per_instance", False)),
        internal_ports=tuple(raw.get("internal_ports", ())),
        config_file=raw["config"]["file"],
        listener_separator=raw["config"].get("separator", "\n"),
        ws_path=raw.get("ws_path", "/mqtt"),
        known_limits=limits,
        references=tuple(raw.get("references", ())),
        credentials={k: str(v) for k, v in (raw.get("credentials") or {}).items() if k in ("username", "password")},
        process=ProcessSpec(
            binary=tuple(proc["binary"]),
            command=tuple(proc["command"]),
            install=proc["install"].strip(),
            requires=tuple(proc.get("requires", ())),
            min_version=str(proc.get("min_version", "")),
            version_args=tuple(proc.get("version_args", ("--version",))),
            env=dict(proc.get("env") or {}),
            vars=dict(proc.get("vars") or {}),
        ) if proc else None,
        docker=DockerSpec(
            image=dock["image"],
            config_path=dock["config_path"],
            certs_path=dock["certs_path"],
            data_path=dock["data_path"],
            install=dock["install"].strip(),
            command=tuple(dock.get("command", ())),
            env=dict(dock.get("env") or {}),
            vars=dict(dock.get("vars") or {}),
            notes=dock.get("notes", "").strip(),
        ) if dock else None,
    )


def render_config(
    defn: BrokerDef,
    listeners: Mapping[str, int],
    *,
    pki: Pki | None,
    data_dir: str,
    instance: str,
    host: str = "127.0.0.1",
    internal_ports: Mapping[str, int] | None = None,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The broker's config text serving `listeners` (kind -> port) on `host`.

    `pki` paths and `data_dir` are written as given: pass the paths the broker will see (host or container).
    """
    defn.check_listeners(list(listeners))
    internal_ports = dict(internal_ports or {})
    missing = [p for p in defn.internal_ports if p not in internal_ports]
    if missing:
        raise BrokerError(f"{defn.name} needs internal port(s) {missing}")
    tls = [k for k in listeners if k in TLS_KINDS]
    if tls and pki is None:
        raise BrokerError(f"{defn.name}: listener(s) {tls} need certificates; pass pki=harness.pki.generate_pki(dir)")

    values = _values(pki=pki, data_dir=data_dir, instance=instance, host=host, internal_ports=internal_ports,
                     extra=extra)
    blocks = []
    for kind in RENDER_ORDER:
        if kind in listeners:
            blocks.append(_substitute(defn, defn.listener_template(kind), {**values, "kind": kind,
                                                                          "port": str(listeners[kind])}))
    return _substitute(defn, defn.template(defn.config_file), {**values, "listeners": defn.listener_separator.join(blocks)})


def render_env(defn: BrokerDef, *, pki: Pki | None, data_dir: str, instance: str, host: str = "127.0.0.1",
               internal_ports: Mapping[str, int] | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process profile's env, its values filled in with the variables the config templates get."""
    values = _values(pki=pki, data_dir=data_dir, instance=instance, host=host, internal_ports=internal_ports or {},
                     extra=extra)
    return {key: _substitute(defn, string.Template(str(value)), values, f"process env {key}")
            for key, value in defn.process.env.items()}


def _values(*, pki: Pki | None, data_dir: str, instance: str, host: str, internal_ports: Mapping[str, int],
            extra: Mapping[str, str] | None) -> dict[str, str]:
    """The variables every template of an instance can use: paths, instance, host, ports and `extra`."""
    paths = {"data_dir": data_dir}
    if pki is not None:
        paths.update({attr: str(path) for attr, path in pki.paths().items()})
    for key, value in paths.items():
        if _UNSAFE_PATH.search(value):
            raise BrokerError(f"path {value!r} ({key}) has characters broker configs cannot carry; "
                              "use a directory without spaces, quotes or shell characters")
    values = {**paths, "instance": instance, "host": host}
    if pki is not None:
        values["store_password"] = pki.store_password
    values.update({f"port_{name}": str(port) for name, port in internal_ports.items()})
    values.update(extra or {})
    return values


def _substitute(defn: BrokerDef, template: string.Template, values: Mapping[str, str],
                what: str = "config template") -> str:
    try:
        return template.substitute(values)
    except KeyError as exc:
        raise BrokerError(f"{defn.name}: {what} uses ${exc.args[0]}, which nobody provides") from None
    except ValueError as exc:
        raise BrokerError(f"{defn.name}: {what} syntax: {exc}") from None


def listener_url(defn: BrokerDef, kind: str, port: int, host: str = "127.0.0.1") -> str:
    """URL of one listener, e.g. mqtts://127.0.0.1:8883 or ws://127.0.0.1:8080/mqtt."""
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    path = defn.ws_path if kind in (WS, WSS) else ""
    return f"{SCHEMES[kind]}://{netloc}{path}"
