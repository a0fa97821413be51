"""Per-run test PKI: a CA, server and client certificates, and deliberately broken ones for negative TLS tests.

Everything is PEM except the two PKCS#12 stores Java brokers want. `generate_pki(dir)` reuses a complete, fresh
set already in `dir`, so calling it at the start of every run is cheap.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

# Bump when the file set or how it is made changes, so an older set in a reused dir is regenerated.
FORMAT_VERSION = 1
SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
CLIENT_CN = "harness-client"
WRONG_HOST = "wrong-host.invalid"
# Password of server.p12 and truststore.p12; PKCS#12 and Java keystores cannot be password-less.
STORE_PASSWORD = "mqtt-harness"

# Valid material: yesterday .. +10 years. Not trustme's default notAfter (year 3000): ejabberd rejects that date.
VALID_FOR = dt.timedelta(days=3652)
# A set is regenerated once a valid certificate gets this close to expiry (or the not-yet-valid one this close to
# becoming valid).
REFRESH_MARGIN = dt.timedelta(days=30)
NOT_YET_VALID_FROM = dt.timedelta(days=5 * 365)

# attribute -> (file name, what it is, for the README)
FILES: dict[str, tuple[str, str]] = {
    "ca": ("ca.pem", "CA certificate. Trust this one file to verify every *good* server and client certificate below."),
    "ca_key": ("ca.key", "CA private key, to issue your own device certificates from the same test CA."),
    "server_cert": ("server.pem", "Server certificate for localhost, 127.0.0.1 and ::1, signed by ca.pem."),
    "server_key": ("server.key", "Private key of server.pem (PKCS#1/SEC1 PEM, unencrypted)."),
    "server_combined": ("server-combined.pem", "server.key followed by server.pem in one file (ejabberd, HAProxy)."),
    "server_p12": ("server.p12", f"PKCS#12 keystore with server.key + server.pem (Java brokers), password `{STORE_PASSWORD}`."),
    "truststore_p12": ("truststore.p12", f"Java PKCS#12 truststore holding ca.pem, password `{STORE_PASSWORD}`."),
    "client_cert": ("client.pem", f"Client certificate, CN `{CLIENT_CN}`, signed by ca.pem: accepted by mTLS listeners."),
    "client_key": ("client.key", "Private key of client.pem."),
    "unknown_ca": ("unknown-ca.pem", "A second CA that nothing trusts; it signs the *-unknownca and *-untrusted files."),
    "server_expired_cert": ("server-expired.pem", "Server certificate (right names, right CA) that expired yesterday."),
    "server_expired_key": ("server-expired.key", "Key of server-expired.pem."),
    "server_notyetvalid_cert": ("server-notyetvalid.pem", "Server certificate (right names, right CA) valid only from 5 years on."),
    "server_notyetvalid_key": ("server-notyetvalid.key", "Key of server-notyetvalid.pem."),
    "server_wronghost_cert": ("server-wronghost.pem", f"Server certificate from ca.pem, but only for `{WRONG_HOST}`: hostname check fails."),
    "server_wronghost_key": ("server-wronghost.key", "Key of server-wronghost.pem."),
    "server_unknownca_cert": ("server-unknownca.pem", "Server certificate for the right names, signed by unknown-ca.pem."),
    "server_unknownca_key": ("server-unknownca.key", "Key of server-unknownca.pem."),
    "client_untrusted_cert": ("client-untrusted.pem", f"Client certificate, CN `{CLIENT_CN}`, signed by unknown-ca.pem: mTLS must refuse it."),
    "client_untrusted_key": ("client-untrusted.key", "Key of client-untrusted.pem."),
    "client_expired_cert": ("client-expired.pem", f"Client certificate, CN `{CLIENT_CN}`, signed by ca.pem, expired yesterday: mTLS must refuse it."),
    "client_expired_key": ("client-expired.key", "Key of client-expired.pem."),
}
MANIFEST = "pki.json"


@dataclass(frozen=True)
class Pki:
    """Paths of one generated PKI set (see FILES for what each one is)."""

    dir: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    server_combined: Path
    server_p12: Path
    truststore_p12: Path
    client_cert: Path
    client_key: Path
    unknown_ca: Path
    server_expired_cert: Path
    server_expired_key: Path
    server_notyetvalid_cert: Path
    server_notyetvalid_key: Path
    server_wronghost_cert: Path
    server_wronghost_key: Path
    server_unknownca_cert: Path
    server_unknownca_key: Path
    client_untrusted_cert: Path
    client_untrusted_key: Path
    client_expired_cert: Path
    client_expired_key: Path
    store_password: str = STORE_PASSWORD

    @classmethod
    def at(cls, directory: str | os.PathLike) -> "Pki":
        """The paths a set has in `directory` (whether or not the files exist there)."""
        directory = Path(directory)
        return cls(dir=directory, **{attr: directory / name for attr, (name, _) in FILES.items()})

    def relocated(self, directory: str) -> "Pki":
        """The same set as seen under another directory, e.g. a container mount point like /mosquitto/certs.
        Each path keeps its file name, so a set from with_server() stays what it is."""
        directory = Path(directory)
        return replace(self, dir=directory, **{attr: directory / getattr(self, attr).name for attr in FILES})

    def with_server(self, variant: str) -> "Pki":
        """This set with a broken server certificate in place of the good one, so a broker serves it:
        variant is "server_expired", "server_notyetvalid", "server_wronghost" or "server_unknownca".
        Only the PEM pair is swapped (server_combined and the PKCS#12 stores keep the good one)."""
        return replace(self, server_cert=getattr(self, f"{variant}_cert"), server_key=getattr(self, f"{variant}_key"))

    def paths(self) -> dict[str, Path]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in FILES}

    def client_context(self, *, cert: str | None = None) -> ssl.SSLContext:
        """A TLS client context trusting ca.pem; `cert` names a client certificate to present:
        "client", "client_untrusted" or "client_expired"."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if cert is not None:
            ctx.load_cert_chain(getattr(self, f"{cert}_cert"), getattr(self, f"{cert}_key"))
        return ctx


def generate_pki(directory: str | os.PathLike, *, force: bool = False) -> Pki:
    """Write a complete PKI set plus README.md into `directory`, or reuse the one there if it is still fresh."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki.at(directory)
    # Parallel test workers or CLI calls may share a directory: one generates, the others then reuse.
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if force or not _is_fresh(pki):
            _write_set(directory)
        else:
            _tighten(directory)  # a set written by an older harness had world-readable keys
        readme = directory / "README.md"
        if not readme.exists():
            readme.write_text(_readme())
    return pki


def _tighten(directory: Path) -> None:
    for name in SECRET_FILES:
        path = directory / name
        if path.exists() and path.stat().st_mode & 0o077:
            os.chmod(path, KEY_MODE)


def _is_fresh(pki: Pki) -> bool:
    try:
        manifest = json.loads((pki.dir / MANIFEST).read_text())
        if manifest.get("version") != FORMAT_VERSION or not all(p.exists() for p in pki.paths().values()):
            return False
        horizon = _now() + REFRESH_MARGIN
        for path in (pki.ca, pki.unknown_ca, pki.server_cert, pki.client_cert, pki.server_unknownca_cert):
            if x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc < horizon:
                return False
        not_yet = x509.load_pem_x509_certificate(pki.server_notyetvalid_cert.read_bytes())
        return not_yet.not_valid_before_utc > horizon
    except (OSError, ValueError):
        return False


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _make_ca(name: str, now: dt.datetime) -> trustme.CA:
    """A CA with bounded validity; trustme's own CAs always run to the year 3000."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mqtt-harness"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + VALID_FOR + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return trustme.CA.from_pem(cert.public_bytes(serialization.Encoding.PEM), key_pem)


KEY_MODE = 0o600
# files that hold a private key: owner-only (the combined PEM and the PKCS#12 bundle carry the server key too)
SECRET_FILES = frozenset(name for attr, (name, _) in FILES.items()
                         if attr.endswith("_key") or attr in ("server_combined", "server_p12"))


def _write_set(directory: Path) -> None:
    now = _now()
    yesterday = now - dt.timedelta(days=1)
    valid = {"not_before": yesterday, "not_after": now + VALID_FOR}
    expired = {"not_before": now - dt.timedelta(days=30), "not_after": yesterday}
    not_yet = {"not_before": now + NOT_YET_VALID_FROM, "not_after": now + VALID_FOR}
    ca = _make_ca("mqtt-harness test CA", now)
    unknown_ca = _make_ca("mqtt-harness unknown CA", now)
    org = {"organization_name": "mqtt-harness"}

    leaves = {
        "server": ca.issue_cert(*SERVER_NAMES, common_name="localhost", **org, **valid),
        "client": ca.issue_cert(CLIENT_CN, common_name=CLIENT_CN, **org, **valid),
        "server_expired": ca.issue_cert(*SERVER_NAMES, common_name="localhost", **org, **expired),
        "server_notyetvalid": ca.issue_cert(*SERVER_NAMES, common_name="localhost", **org, **not_yet),
        "server_wronghost": ca.issue_cert(WRONG_HOST, common_name=WRONG_HOST, **org, **valid),
        "server_unknownca": unknown_ca.issue_cert(*SERVER_NAMES, common_name="localhost", **org, **valid),
        "client_untrusted": unknown_ca.issue_cert(CLIENT_CN, common_name=CLIENT_CN, **org, **valid),
        "client_expired": ca.issue_cert(CLIENT_CN, common_name=CLIENT_CN, **org, **expired),
    }
    server = leaves["server"]
    server_key = serialization.load_pem_private_key(server.private_key_pem.bytes(), password=None)
    server_x509 = x509.load_pem_x509_certificate(server.cert_chain_pems[0].bytes())
    ca_x509 = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    store_enc = serialization.BestAvailableEncryption(STORE_PASSWORD.encode())

    contents: dict[str, bytes] = {
        "ca": ca.cert_pem.bytes(),
        "ca_key": ca.private_key_pem.bytes(),
        "server_combined": server.private_key_pem.bytes() + server.cert_chain_pems[0].bytes(),
        "server_p12": pkcs12.serialize_key_and_certificates(b"server", server_key, server_x509, None, store_enc),
        "truststore_p12": pkcs12.serialize_java_truststore(
            [pkcs12.PKCS12Certificate(ca_x509, b"mqtt-harness-ca")], store_enc),
        "unknown_ca": unknown_ca.cert_pem.bytes(),
    }
    for prefix, leaf in leaves.items():
        contents[f"{prefix}_cert"] = leaf.cert_chain_pems[0].bytes()
        contents[f"{prefix}_key"] = leaf.private_key_pem.bytes()
    assert contents.keys() == FILES.keys()

    # Write into a scratch dir and move the files in; the manifest goes last, so it marks a complete set.
    scratch = Path(tempfile.mkdtemp(dir=directory, prefix=".new-"))
    try:
        (directory / MANIFEST).unlink(missing_ok=True)
        for attr, data in contents.items():
            name = FILES[attr][0]
            (scratch / name).write_bytes(data)
            # Private keys for the owner only; brokers in containers get their own copy they own (docker backend).
            os.chmod(scratch / name, KEY_MODE if name in SECRET_FILES else 0o644)
            os.replace(scratch / name, directory / name)
        manifest = {"version": FORMAT_VERSION, "generated": now.isoformat(timespec="seconds"),
                    "valid_until": (now + VALID_FOR).isoformat(timespec="seconds")}
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        (directory / "README.md").write_text(_readme())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _readme() -> str:
    rows = "\n".join(f"| `{name}` | {what} |" for name, what in FILES.values())
    return f"""# Test PKI generated by mqtt-harness

**For testing only.** Every key here is unencrypted and readable by anyone on this machine. Never use this CA or
these keys for anything but tests; never commit them.

Regenerate with `mqtt-harness certs DIR` (a fresh set is reused; delete `{MANIFEST}` to force a new one).
Good certificates are valid from the day before generation for 10 years; all keys are ECDSA P-256.

| file | what it is |
|---|---|
{rows}
| `{MANIFEST}` | Format version and dates of this set; written last, so its presence marks a complete set. |

## Configuring your own broker

- TLS listener: server certificate `server.pem`, key `server.key`, CA `ca.pem`.
  Brokers that want key and certificate in one file: `server-combined.pem`. Java brokers: keystore `server.p12`.
- Mutual TLS: also require client certificates signed by `ca.pem` (Java: truststore `truststore.p12`).
  The harness then presents `client.pem`/`client.key` (CN `{CLIENT_CN}`), and expects the broker to refuse
  `client-untrusted.pem` and `client-expired.pem`.
- Connect to the broker as `localhost`, `127.0.0.1` or `::1`: those are the names `server.pem` carries.

## Configuring a device or client

Trust `ca.pem` only. A correct client accepts `server.pem` and must refuse each of `server-expired.pem`,
`server-notyetvalid.pem`, `server-wronghost.pem` and `server-unknownca.pem` (a device test points it at a broker
that serves one of those). The password of both `.p12` files is `{STORE_PASSWORD}`.
"""
