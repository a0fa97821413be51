"""Brokers under test for the pytest plugin: parsing --broker, the default choice, and one running instance per
broker and test process (so each pytest-xdist worker has its own brokers, ports and client ids)."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.brokers import definitions as brokerdefs, reaper
from harness.brokers.backends import BACKENDS, load_backend
from harness.brokers.broker import (
    LISTENER_KINDS, MQTT, MQTTS, MQTTS_MTLS, WS, WSS, Broker, BrokerError, BrokerUnavailable, Capabilities,
)
from harness.brokers.definitions import TLS_KINDS
from harness.errors import UrlError
from harness.pki import Pki, generate_pki
from harness.brokers.probe import run_sync
from harness.transport import TlsOptions
from harness.url import parse_url

DEFAULT_BROKER = "mosquitto"
# The PKI brokers are started with; the same directory `mqtt-harness brokers up` uses, so devices can trust it.
CERTS_DIR = brokerdefs.BROKERS_DIR.parent / "certs"
EXTERNAL = "external"
_SCHEME_KINDS = {"mqtt": MQTT, "mqtts": MQTTS, "ws": WS, "wss": WSS}
START_TIMEOUT = 60.0


class BrokerSpecError(ValueError):
    """A --broker value that names nothing runnable; the message says what to write instead."""


@dataclass(frozen=True)
class BrokerSpec:
    """One --broker value: a broker definition run by a backend, or URLs of a broker someone else runs."""

    id: str  # pytest parameter id and report column: "mosquitto-docker", "url-127.0.0.1-1883"
    name: str  # as written: "mosquitto:docker", "mqtt://127.0.0.1:1883"
    backend: str  # "process", "docker" or "external"
    definition: str | None = None
    image: str | None = None  # docker: the image to run (official, or our locally built one)
    urls: tuple[tuple[str, str], ...] = ()  # external: (listener kind, URL)
    chosen_because: str = ""  # why this backend/image, for the session header
    broken: str | None = None  # broken-broker mode: the harness.proxy.broken rule set put in front of it


@dataclass(frozen=True)
class ClientTls:
    """How test clients authenticate to external brokers (--ca/--cert/--key/--username/--password)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password: str | None = None


def parse_broker(text: str, *, mtls_url: str | None = None) -> BrokerSpec:
    """Parse one --broker value: NAME, NAME:BACKEND, or URL[,URL...] (an item may be KIND=URL, e.g.
    mqtts-mtls=mqtts://host:8884, to name the listener kind a URL serves)."""
    text = text.strip()
    if "://" in text:
        return _external(text, mtls_url)
    name, _, backend = text.partition(":")
    if name not in brokerdefs.names():
        raise BrokerSpecError(f"unknown broker {name!r}: use one of {', '.join(brokerdefs.names())} "
                              "(optionally NAME:process or NAME:docker), or a URL such as mqtt://host:1883")
    defn = brokerdefs.load(name)
    if not backend:
        return choose_backend(defn)
    if backend not in BACKENDS:
        raise BrokerSpecError(f"unknown backend {backend!r} in {text!r}: use {' or '.join(BACKENDS)}")
    if getattr(defn, backend) is None:
        others = [b for b in BACKENDS if getattr(defn, b) is not None]
        raise BrokerSpecError(f"{name} cannot run with the {backend} backend; use {name}:{others[0]}")
    image = docker_image(defn)[0] if backend == "docker" else None
    return BrokerSpec(f"{name}-{backend}", text, backend, definition=name, image=image)


def _external(text: str, mtls_url: str | None) -> BrokerSpec:
    urls: dict[str, str] = {}
    items = [item.strip() for item in text.split(",") if item.strip()]
    if mtls_url:
        items.append(f"{MQTTS_MTLS}={mtls_url}")
    for item in items:
        kind, sep, url = item.partition("=")
        if not sep or "://" in kind:
            kind, url = "", item
        try:
            parsed = parse_url(url)
        except UrlError as exc:
            raise BrokerSpecError(f"--broker {text!r}: {exc}") from None
        kind = kind or _SCHEME_KINDS[parsed.scheme]
        if kind not in LISTENER_KINDS:
            raise BrokerSpecError(f"--broker {text!r}: unknown listener kind {kind!r}; use one of "
                                  f"{', '.join(LISTENER_KINDS)}")
        if kind in urls:
            raise BrokerSpecError(f"--broker {text!r} names two {kind} listeners; give one URL per kind")
        urls[kind] = url
    first = parse_url(next(iter(urls.values())))
    ident = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"url-{first.host}-{first.port}")
    return BrokerSpec(ident, text, EXTERNAL, urls=tuple(urls.items()))


def docker_image(defn: brokerdefs.BrokerDef) -> tuple[str | None, str | None]:
    """(image, None) if `defn` can run in docker here: its own image when present, else the harness's locally
    built one (see harness.brokers.images); (None, why not) otherwise."""
    try:
        docker = load_backend("docker")
    except BrokerUnavailable as exc:
        return None, str(exc)
    if defn.docker is None:
        return None, f"{defn.name} has no docker definition"
    reason = docker.unavailable_reason(defn)
    if reason is None:
        return defn.docker.image, None
    from harness.brokers import images

    recipe = images.LOCAL_IMAGES.get(defn.name)
    if recipe is not None and docker.unavailable_reason(defn, image=recipe.tag) is None:
        return recipe.tag, None
    return None, reason


def choose_backend(defn: brokerdefs.BrokerDef) -> BrokerSpec:
    """The backend a bare broker name runs with: docker where it works here, else the process backend.
    The one place this choice is made; `chosen_because` says why."""
    image, why_not = docker_image(defn) if defn.docker is not None else (None, "no docker definition")
    if image is not None:
        return BrokerSpec(f"{defn.name}-docker", defn.name, "docker", definition=defn.name, image=image,
                          chosen_because=f"docker works here (image {image})")
    if defn.process is None:  # docker is the only way: let it fail at start with its own reason
        return BrokerSpec(f"{defn.name}-docker", defn.name, "docker", definition=defn.name,
                          chosen_because=f"docker is its only backend, but: {why_not}")
    return BrokerSpec(f"{defn.name}-process", defn.name, "process", definition=defn.name,
                      chosen_because=f"docker unavailable ({why_not})")


def default_broker() -> BrokerSpec:
    """The broker tests run against when no --broker is given."""
    return choose_backend(brokerdefs.load(DEFAULT_BROKER))


def unique_ids(specs: list[BrokerSpec]) -> list[BrokerSpec]:
    """The same broker given twice gets ids -2, -3 ... so both columns stay apart."""
    seen: dict[str, int] = {}
    out = []
    for spec in specs:
        seen[spec.id] = seen.get(spec.id, 0) + 1
        out.append(spec if seen[spec.id] == 1 else dataclasses.replace(spec, id=f"{spec.id}-{seen[spec.id]}"))
    return out


def unavailable_reason(spec: BrokerSpec) -> str | None:
    """Why a managed broker cannot run here (with the fix), checked before any test runs; None if it can."""
    if spec.backend == EXTERNAL:
        return None
    defn = brokerdefs.load(spec.definition)
    if spec.backend == "docker":
        return None if spec.image else docker_image(defn)[1]
    try:
        return load_backend("process").unavailable_reason(defn)
    except BrokerUnavailable as exc:
        return str(exc)


class BrokerUnderTest:
    """The `broker` fixture: one broker under test, running (or reachable) for the whole session.

    Tests use `url(kind)`, `has(kind)`, `tls(kind)`, `capabilities`, `name` and `logs()`; the client_factory
    fixture builds connected clients from these.
    """

    def __init__(self, spec: BrokerSpec, *, pki: Pki, client_tls: ClientTls, instance: Broker | None = None,
                 capabilities: Capabilities, capabilities_source: str, known_limits: dict[str, str],
                 display_name: str = "", product: str = "", version: str = "", notes: list[str] | None = None):
        self.spec = spec
        self.id = spec.id
        self.name = spec.name
        self.backend = spec.backend
        self.instance = instance  # the harness.brokers.broker.Broker for managed brokers; None for external ones
        self.front = None  # broken-broker mode: the harness.proxy.broken.BrokenFront its listeners go through
        self.pki = pki
        self.client_tls = client_tls
        self.capabilities = capabilities
        self.capabilities_source = capabilities_source
        self.known_limits = known_limits
        self.display_name = display_name or spec.name
        self.product = product
        self.version = version
        self.notes = list(notes or [])
        self.crash_logs: list[str] = []  # the log tail of each instance that died during the run

    def __repr__(self) -> str:
        return f"<BrokerUnderTest {self.id} {self.urls()}>"

    def urls(self) -> dict[str, str]:
        """Listener kind -> URL, for the kinds this broker serves (in broken-broker mode, the proxy's URLs for
        the listeners behind it)."""
        urls = self.instance.urls() if self.instance is not None else dict(self.spec.urls)
        return urls if self.front is None else {**urls, **self.front.urls}

    def has(self, kind: str) -> bool:
        return kind in self.urls()

    def url(self, kind: str = MQTT) -> str:
        urls = self.urls()
        if kind not in urls:
            hint = " (declare it with --mtls-url)" if kind == MQTTS_MTLS and self.instance is None else ""
            raise BrokerUnavailable(f"{self.name} has no {kind} listener{hint}; it serves {', '.join(urls)}. "
                                    f"Mark the test @pytest.mark.requires({_requirement(kind)}=True)")
        return urls[kind]

    def tls(self, kind: str = MQTT, cert: str | None = "client") -> TlsOptions | None:
        """TLS options for a client of listener `kind` (None for plain ones). On the mqtts-mtls listener the client
        presents `cert`: "client" (trusted), "client_untrusted", "client_expired" (harness PKI), or None."""
        if kind not in TLS_KINDS:
            return None
        ca = str(self.pki.ca) if self.instance is not None else self.client_tls.ca
        if kind != MQTTS_MTLS or cert is None:
            return TlsOptions(ca=ca)
        if cert == "client" and self.instance is None:
            return TlsOptions(ca=ca, cert=self.client_tls.cert, key=self.client_tls.key)
        return TlsOptions(ca=ca, cert=str(getattr(self.pki, f"{cert}_cert")), key=str(getattr(self.pki, f"{cert}_key")))

    @property
    def credentials(self) -> dict[str, Any]:
        """username/password test clients log in with: --username/--password, else a managed broker's profile."""
        given = {"username": self.client_tls.username, "password": self.client_tls.password}
        profile = self.instance.credentials if self.instance is not None else {}
        return {key: profile.get(key) if value is None else value for key, value in given.items()}

    @property
    def login(self) -> dict[str, Any]:
        """`credentials` as CONNECT fields (only those set; the password as bytes), for CONNECTs built by hand."""
        return {key: value.encode() if key == "password" and isinstance(value, str) else value
                for key, value in self.credentials.items() if value is not None}

    def logs(self) -> str:
        """The broker's log so far ("" for external brokers: their logs are not ours to read)."""
        return self.instance.logs() if self.instance is not None else ""

    def info(self) -> dict[str, Any]:
        """This broker as a report BrokerInfo dict."""
        return {
            "id": self.id, "name": self.name, "backend": self.backend,
            "urls": {kind: [url] for kind, url in self.urls().items()},
            "display_name": self.display_name, "product": self.product, "version": self.version,
            "capabilities": {k: v for k, v in dataclasses.asdict(self.capabilities).items() if k != "known_limits"},
            "capabilities_source": self.capabilities_source, "known_limits": dict(self.known_limits),
            "notes": list(self.notes),
        }


def _break(broker: BrokerUnderTest, name: str) -> None:
    """Broken-broker mode: put the named rule set's proxy in front of the broker (see harness.proxy.broken)."""
    from harness.proxy.broken import BrokenFront, rule_set

    broker.front = BrokenFront(rule_set(name), broker.urls()).start()
    broker.display_name = f"{broker.display_name} [broken: {name}]"
    broker.notes.append(broker.front.note())


def _version_number(text: str) -> str:
    """ "mosquitto version 2.0.11" -> "2.0.11" """
    match = re.search(r"\d+(\.\d+)+", text)
    return match.group() if match else ""


def _requirement(kind: str) -> str:
    return {MQTTS: "tls", MQTTS_MTLS: "mtls", WS: "ws", WSS: "wss"}.get(kind, kind)


@dataclass
class BrokerPool:
    """Starts each broker the first time a test needs it and stops them all at the end of the session.

    A broker that failed to start is not retried: every later test on it gets the same error at once.
    """

    client_tls: ClientTls = field(default_factory=ClientTls)
    extra_limits: dict[str, dict[str, str]] = field(default_factory=dict)  # --known-limits: broker -> id -> reason
    certs_dir: Path = CERTS_DIR
    profile: str | None = None  # --profile: the definition whose documented limits URL brokers get
    _profiles: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    _brokers: dict[str, BrokerUnderTest] = field(default_factory=dict)
    _failures: dict[str, BaseException] = field(default_factory=dict)
    _limits_by_profile: dict[str, dict[str, str]] = field(default_factory=dict)
    _pki: Pki | None = None

    @property
    def pki(self) -> Pki:
        if self._pki is None:
            self._pki = generate_pki(self.certs_dir)
        return self._pki

    def profile_of(self, spec: BrokerSpec) -> tuple[str | None, str]:
        """The definition whose documented limits a broker gets, and why: its own, --profile, or (a URL broker)
        the product it names in $SYS/broker/version."""
        if spec.definition:
            return spec.definition, "its definition"
        if spec.id not in self._profiles:
            self._profiles[spec.id] = self._detect_profile(spec)
        return self._profiles[spec.id]

    def _detect_profile(self, spec: BrokerSpec) -> tuple[str | None, str]:
        if self.profile:
            return self.profile, "--profile"
        from harness.brokers.discovery import broker_version
        from harness.brokers.probe import run_sync

        urls = dict(spec.urls)
        kind = next((k for k in (MQTT, MQTTS, WS, WSS) if k in urls), None)
        if kind is None:
            return None, "no profile: no listener to ask"
        probe = BrokerUnderTest(spec, pki=self.pki, client_tls=self.client_tls, capabilities=Capabilities(),
                                capabilities_source="", known_limits={})
        try:
            said = run_sync(lambda: broker_version(urls[kind], tls=probe.tls(kind), **probe.credentials), 10.0)
        except Exception:  # noqa: BLE001 - unreachable: the tests report that themselves
            said = ""
        words = said.lower().replace("-", " ").split()
        for name in brokerdefs.names():
            if name.lower() in words or (said.lower().startswith(name.lower())):
                return name, f"$SYS/broker/version says {said!r}"
        return None, (f"no profile: $SYS/broker/version says {said!r}, which names no known broker" if said else
                      "no profile: the broker does not publish $SYS/broker/version (give --profile NAME)")

    def known_limits(self, spec: BrokerSpec) -> dict[str, str]:
        """Profile known limits plus --known-limits entries for this broker (by id or by name as written)."""
        profile = self.profile_of(spec)[0]
        limits = dict(self._profile_limits(profile)) if profile else {}
        for key in (spec.definition, spec.name, spec.id):
            limits.update(self.extra_limits.get(key or "", {}))
        return limits

    def _profile_limits(self, profile: str) -> dict[str, str]:
        """The profile's known limits, read once per run: asked for every collected test, and parsing the
        broker.yaml each time was 20 of the 30 s a worker spent collecting the suites."""
        if profile not in self._limits_by_profile:
            self._limits_by_profile[profile] = brokerdefs.load(profile).capabilities.known_limits
        return self._limits_by_profile[profile]

    def get(self, spec: BrokerSpec) -> BrokerUnderTest:
        if spec.id in self._brokers:
            return self._brokers[spec.id]
        if spec.id in self._failures:
            raise self._failures[spec.id]
        if not self._brokers and not self._failures:
            reaper.reap_once()  # leftovers of a crashed earlier run go before we start anything
        try:
            broker = self._external(spec) if spec.backend == EXTERNAL else self._start(spec)
        except BrokerError as exc:
            self._failures[spec.id] = exc
            raise
        if spec.broken:
            _break(broker, spec.broken)
        self._brokers[spec.id] = broker
        return broker

    def restart_if_dead(self, broker: BrokerUnderTest, test_id: str) -> str | None:
        """If the managed broker behind `broker` has died, start a fresh one in its place (same BrokerUnderTest,
        new URLs) and note it in the report. Returns how it ended, or None if it is alive."""
        if broker.instance is None:
            return None
        ended = broker.instance.exit_status()
        if ended is None:
            return None
        log_tail = "\n".join(broker.instance.logs().splitlines()[-40:])
        with contextlib.suppress(BrokerError):
            broker.instance.stop()
        fresh = self._start(broker.spec)
        broker.instance = fresh.instance
        if broker.front is not None:  # broken-broker mode: the proxies must now lead to the new instance
            from harness.proxy.broken import BrokenFront, rule_set

            broker.front.stop()
            broker.front = None
            broker.front = BrokenFront(rule_set(broker.spec.broken), broker.urls()).start()
        broker.notes.append(f"crashed during {test_id} ({ended}); restarted for the tests after it")
        broker.crash_logs.append(f"--- {broker.name} crashed during {test_id} ({ended}); last lines ---\n{log_tail}")
        return ended

    def info(self, spec: BrokerSpec) -> dict[str, Any]:
        """The report BrokerInfo dict of `spec`, also for a broker that could not be started or reached."""
        if spec.id in self._brokers:
            return self._brokers[spec.id].info()
        failure = self._failures.get(spec.id)
        defn = brokerdefs.load(spec.definition) if spec.definition else None
        return {"id": spec.id, "name": spec.name, "backend": spec.backend,
                "urls": {kind: [url] for kind, url in spec.urls}, "display_name": defn.display_name if defn else "",
                "product": defn.product if defn else "", "version": "", "capabilities": {},
                "capabilities_source": "", "known_limits": self.known_limits(spec),
                "notes": [f"not available: {str(failure).splitlines()[0]}"] if failure else []}

    def _start(self, spec: BrokerSpec) -> BrokerUnderTest:
        defn = brokerdefs.load(spec.definition)
        listeners = defn.default_listeners if defn.one_listener_per_instance else defn.listeners
        kwargs = {"image": spec.image} if spec.backend == "docker" and spec.image else {}
        instance = load_backend(spec.backend).create(defn, listeners=listeners, pki=self.pki, **kwargs)
        instance.start(timeout=START_TIMEOUT)
        try:
            from harness.brokers.discovery import broker_version

            probe = next(k for k in (MQTT, MQTTS) if k in instance.urls())
            tls = TlsOptions(ca=str(self.pki.ca)) if probe == MQTTS else None
            version = run_sync(lambda: broker_version(instance.urls()[probe], tls=tls), 15.0)
        except BaseException:
            instance.stop()
            raise
        return BrokerUnderTest(spec, pki=self.pki, client_tls=self.client_tls, instance=instance,
                               capabilities=defn.capabilities, capabilities_source="profile",
                               known_limits=self.known_limits(spec), display_name=defn.display_name,
                               product=defn.product, version=_version_number(version))

    def _external(self, spec: BrokerSpec) -> BrokerUnderTest:
        from harness.brokers.discovery import discover

        urls = dict(spec.urls)
        kind = next((k for k in (MQTT, MQTTS, WS, WSS, MQTTS_MTLS) if k in urls))
        probe = BrokerUnderTest(spec, pki=self.pki, client_tls=self.client_tls, capabilities=Capabilities(),
                                capabilities_source="", known_limits={})
        found = run_sync(lambda: discover(urls[kind], tls=probe.tls(kind), **probe.credentials), 60.0)
        found.capabilities.known_limits = self.known_limits(spec)
        return BrokerUnderTest(spec, pki=self.pki, client_tls=self.client_tls, capabilities=found.capabilities,
                               capabilities_source="discovery", known_limits=self.known_limits(spec),
                               product=found.version, version=_version_number(found.version),
                               notes=found.notes)

    def stop_all(self) -> list[str]:
        """Stop every broker this pool started; returns the errors (one line each) instead of raising."""
        errors = []
        for broker in self._brokers.values():
            if broker.front is not None:
                broker.front.stop()
            if broker.instance is not None:
                try:
                    broker.instance.stop()
                except BrokerError as exc:
                    errors.append(f"{broker.id}: {exc}")
        self._brokers.clear()
        return errors
