"""Local endpoints that reproduce each failure cause: mosquitto processes (harness.brokers.backends.process) started
with a broken certificate, a TLS version limit or password authentication, and the slow/blackholed listeners.

Each variant is the mosquitto broker definition with its config templates rewritten into a private directory, so
the harness's process backend (ports, readiness probe, reaper records, logs) runs it like any other broker.
"""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from pathlib import Path

from harness.brokers import definitions as brokerdefs
from harness.brokers.backends.process import ProcessBroker
from harness.brokers.broker import MQTT, MQTTS, MQTTS_MTLS
from harness.diagnose.certs import make_chain
from harness.diagnose.serving import ThreadedServer
from harness.pki import Pki

USERNAME, PASSWORD = "device", "s3cret"
# variant -> (server certificate swap, extra lines for the mqtts listener, listener kinds)
VARIANTS = {
    "healthy": {"listeners": (MQTT, MQTTS, MQTTS_MTLS)},
    "expired": {"server": "server_expired"},
    "notyetvalid": {"server": "server_notyetvalid"},
    "wronghost": {"server": "server_wronghost"},
    "unknownca": {"server": "server_unknownca"},
    "missing_intermediate": {"chain": "leaf"},
    "fullchain": {"chain": "fullchain"},
    "tls13": {"mqtts": "tls_version tlsv1.3"},
    "auth": {"mqtts": "allow_anonymous false\npassword_file $run_dir_passwd\nacl_file $run_dir_acl",
             "per_listener": True},
}
ACL = f"user {USERNAME}\ntopic readwrite #\n"


def start_variant(name: str, pki: Pki, workdir: str | Path | None = None, timeout: float = 30.0) -> ProcessBroker:
    """Start mosquitto as variant `name` (see VARIANTS); the caller stops it. Listeners: mqtt (readiness, plain)
    and mqtts (the variant), plus mqtts-mtls for "healthy"."""
    spec = VARIANTS[name]
    work = Path(workdir or tempfile.mkdtemp(prefix=f"mh-diag-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    base = brokerdefs.load("mosquitto")
    config = work / "config"
    config.mkdir(exist_ok=True)
    vars_ = {}
    for template in (base.directory / "config").iterdir():
        text = template.read_text()
        if template.name == base.config_file and spec.get("per_listener"):
            text = text.replace("allow_anonymous true", "per_listener_settings true")
        if template.name == "listener-mqtt.conf" and spec.get("per_listener"):
            text += "\nallow_anonymous true\n"
        if template.name == "listener-mqtts.conf" and spec.get("mqtts"):
            text += "\n" + spec["mqtts"] + "\n"
        (config / template.name).write_text(text)
    if spec.get("per_listener"):
        passwd = work / "passwd"
        passwd.write_text("")
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), USERNAME, PASSWORD], check=True,
                       capture_output=True, timeout=30)
        (work / "acl").write_text(ACL)
        vars_ = {"run_dir_passwd": str(passwd), "run_dir_acl": str(work / "acl")}
    served = pki
    if spec.get("server"):
        served = pki.with_server(spec["server"])
    if spec.get("chain"):
        chain = make_chain(work / "chain")
        cert = chain.leaf if spec["chain"] == "leaf" else chain.fullchain
        served = dataclasses.replace(pki, server_cert=cert, server_key=chain.key)
    process = dataclasses.replace(base.process, vars={**base.process.vars, **vars_})
    defn = dataclasses.replace(base, name=f"mosquitto-{name}", directory=work, process=process)
    broker = ProcessBroker(defn, listeners=spec.get("listeners", (MQTT, MQTTS)), pki=served)
    broker.start(timeout=timeout)
    return broker


def chain_files(broker: ProcessBroker) -> object:
    """The intermediate chain a missing_intermediate/fullchain variant serves (its root is what to trust)."""
    return make_chain(Path(broker.definition.directory) / "chain")


class CredentialsBroker(ThreadedServer):
    """A scripted MQTT endpoint (TLS, optionally only old TLS versions, or plain) that only authenticates:
    CONNACK 0 for USERNAME/PASSWORD, 4 / 0x86 (bad user name or password) for a wrong password or unknown user,
    5 / 0x87 (not authorized) without a user name, then closes. mosquitto 2.0.11 answers 5 / 0x87 to a wrong
    password too, so the bad-credentials case needs this stand-in. Blocking sockets in threads, so the TLS stack
    sends its alerts before closing."""

    def __init__(self, pki: Pki | None = None, *, host: str = "127.0.0.1", tls_maximum=None):
        self.pki = pki
        self.host = host
        self.tls_maximum = tls_maximum  # e.g. ssl.TLSVersion.TLSv1_1: an old broker no modern client can talk to
        self.port: int | None = None
        self._ctx = None

    name = "mh-credentials"

    def start(self) -> CredentialsBroker:
        import ssl
        import warnings

        if self.pki is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.pki.server_cert, self.pki.server_key)
            if self.tls_maximum is not None:
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # old versions on purpose
                    ctx.minimum_version = ssl.TLSVersion.TLSv1
                    ctx.maximum_version = self.tls_maximum
            self._ctx = ctx
        self._listen()
        return self

    def url(self) -> str:
        return f"{'mqtts' if self.pki else 'mqtt'}://{self.host}:{self.port}"

    def _handle(self, conn) -> None:
        import contextlib
        import ssl

        from harness.core.codec import Decoder, encode
        from harness.core.packets import Connack, Connect

        conn.settimeout(10)
        try:
            if self._ctx is not None:
                conn = self._ctx.wrap_socket(conn, server_side=True)
            decoder = Decoder()
            packets = []
            while not packets:
                data = conn.recv(4096)
                if not data:
                    return
                packets = decoder.feed(data)
            connect = packets[0]
            if not isinstance(connect, Connect):
                return
            v5 = connect.protocol_level >= 5
            password = connect.password.decode() if connect.password else None
            if connect.username is None:
                code = 0x87 if v5 else 5
            elif connect.username == USERNAME and password == PASSWORD:
                code = 0
            else:
                code = 0x86 if v5 else 4
            conn.sendall(encode(Connack(reason_code=code), connect.protocol_level))
            if code == 0:
                conn.recv(4096)  # a roundtrip is not served: this endpoint checks credentials only
        except (OSError, ssl.SSLError, ValueError):
            pass  # a bad client (or a refused TLS version) must not stop the endpoint
        except Exception:  # noqa: BLE001 - e.g. a ProtocolError from a client that is not MQTT
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def __enter__(self) -> CredentialsBroker:
        return self.start()
