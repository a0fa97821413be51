"""TLS inspection without trusting the handshake to judge: record what the handshake carried, then check the
server's chain ourselves, against the local clock and a device's clock, so each problem gets its own name.

- HandshakeRecorder hooks SSLContext._msg_callback (CPython's message hook): it keeps the server's Certificate
  message (TLS 1.2 and 1.3), whether the server sent a CertificateRequest, whether we sent a certificate, the
  alerts both ways and session tickets (TLS 1.3: the server accepted our side of the handshake).
- check_chain() builds the path from the leaf through the certificates the server sent to a trust anchor and
  reports every problem (untrusted, missing intermediate, expired, not yet valid, wrong clock, host name) with the
  mbedTLS verify flags a device would set for it.

Pure functions over bytes and certificates, apart from loading trust stores from files.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID

# TLS alert descriptions (RFC 8446 §6, RFC 5246 §7.2)
ALERTS = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow", 40: "handshake_failure",
    42: "bad_certificate", 43: "unsupported_certificate", 44: "certificate_revoked", 45: "certificate_expired",
    46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca", 49: "access_denied", 50: "decode_error",
    51: "decrypt_error", 70: "protocol_version", 71: "insufficient_security", 80: "internal_error",
    86: "inappropriate_fallback", 90: "user_canceled", 109: "missing_extension", 110: "unsupported_extension",
    112: "unrecognized_name", 113: "bad_certificate_status_response", 115: "unknown_psk_identity",
    116: "certificate_required", 120: "no_application_protocol",
}
# Alerts a server sends about the client's certificate (or its absence).
CLIENT_CERT_ALERTS = {42, 43, 44, 45, 46, 48, 49, 116}
# OpenSSL reason strings for the same alerts, as ssl.SSLError.reason carries them.
ALERT_REASONS = {f"{prefix}_ALERT_{name.upper()}": code for code, name in ALERTS.items()
                 for prefix in ("SSLV3", "TLSV1", "TLSV13")}

_DER = Encoding.DER
_HANDSHAKE, _ALERT = 22, 21
_CERTIFICATE, _CERTIFICATE_REQUEST, _NEW_SESSION_TICKET, _SERVER_HELLO = 11, 13, 4, 2


@dataclass
class HandshakeRecorder:
    """What went over the wire during (and just after) a TLS handshake, from the message callback."""

    server_certificate_message: bytes | None = None
    certificate_request: bool = False
    client_certificate_sent: bool = False  # a non-empty Certificate message went out
    server_hello: bool = False
    tickets: int = 0
    alerts_received: list[int] = field(default_factory=list)
    alerts_sent: list[int] = field(default_factory=list)
    bytes_read: int = 0  # record-header bytes seen from the server (0: it never answered in TLS)
    on_ticket: Any = None  # callable, called when a TLS 1.3 session ticket arrives (server accepted our Finished)

    def install(self, ctx: ssl.SSLContext) -> ssl.SSLContext:
        ctx._msg_callback = self._callback  # CPython's handshake-message hook (used by its own tests)
        return ctx

    def _callback(self, conn, direction, version, content_type, msg_type, data) -> None:
        reading = direction == "read"
        if int(content_type) == 256:  # TLS_HEADER pseudo content type: a record header
            if reading:
                self.bytes_read += len(data)
            return
        if int(content_type) == _ALERT and len(data) >= 2:
            (self.alerts_received if reading else self.alerts_sent).append(data[1])
            return
        if int(content_type) != _HANDSHAKE or not data:
            return
        kind = data[0]
        if reading:
            if kind == _SERVER_HELLO:
                self.server_hello = True
            elif kind == _CERTIFICATE:
                self.server_certificate_message = bytes(data)
            elif kind == _CERTIFICATE_REQUEST:
                self.certificate_request = True
            elif kind == _NEW_SESSION_TICKET:
                self.tickets += 1
                if self.on_ticket is not None:
                    self.on_ticket()
        elif kind == _CERTIFICATE:
            self.client_certificate_sent = bool(parse_certificate_message(bytes(data)))

    @property
    def server_chain(self) -> list[bytes]:
        return parse_certificate_message(self.server_certificate_message) if self.server_certificate_message else []


def parse_certificate_message(msg: bytes) -> list[bytes]:
    """DER certificates of a TLS Certificate handshake message (with its 4-byte header), TLS 1.3 or 1.2 layout."""
    body = msg[4:4 + int.from_bytes(msg[1:4], "big")]
    for tls13 in (True, False):
        try:
            return _parse_list(body, tls13)
        except ValueError:
            continue
    return []


def _parse_list(body: bytes, tls13: bool) -> list[bytes]:
    pos = 0
    if tls13:
        ctx_len = body[0]
        pos = 1 + ctx_len
    total = int.from_bytes(body[pos:pos + 3], "big")
    pos += 3
    if pos + total != len(body):
        raise ValueError("length mismatch")
    certs = []
    while pos < len(body):
        n = int.from_bytes(body[pos:pos + 3], "big")
        pos += 3
        if n == 0 or pos + n > len(body):
            raise ValueError("bad certificate entry")
        certs.append(body[pos:pos + n])
        pos += n
        if tls13:
            ext = int.from_bytes(body[pos:pos + 2], "big")
            pos += 2 + ext
    if pos != len(body):
        raise ValueError("trailing bytes")
    return certs


# ---------------------------------------------------------------------------------------------- certificates

def _name(name: x509.Name) -> str:
    return name.rfc4514_string()


def _attr(name: x509.Name, oid) -> str | None:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else None


def sans(cert: x509.Certificate) -> dict[str, list[str]]:
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return {"dns": [], "ip": []}
    return {"dns": [str(n) for n in ext.get_values_for_type(x509.DNSName)],
            "ip": [str(n) for n in ext.get_values_for_type(x509.IPAddress)]}


def ca_issuers_urls(cert: x509.Certificate) -> list[str]:
    try:
        aia = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_INFORMATION_ACCESS).value
    except x509.ExtensionNotFound:
        return []
    return [d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS]


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and issued_by(cert, cert)


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def cert_info(cert: x509.Certificate) -> dict[str, Any]:
    """The fields diagnose shows for one certificate."""
    return {
        "subject": _name(cert.subject), "issuer": _name(cert.issuer), "sans": sans(cert),
        "not_before": cert.not_valid_before_utc.isoformat(), "not_after": cert.not_valid_after_utc.isoformat(),
        "self_signed": is_self_signed(cert),
        "sha256": hashlib.sha256(cert.public_bytes(_DER)).hexdigest(),
    }


def load_trust(ca: str | None) -> tuple[list[x509.Certificate], str]:
    """Trust anchors: the PEM file or directory `ca`, else the system store. Returns (anchors, where)."""
    if ca is not None:
        return _load_pem_path(ca), ca
    paths = ssl.get_default_verify_paths()
    where = paths.cafile or paths.openssl_cafile
    if where and os.path.isfile(where):
        return list(_system_store(where)), f"system store ({where})"
    capath = paths.capath or paths.openssl_capath
    if capath and os.path.isdir(capath):
        return _load_pem_path(capath), f"system store ({capath})"
    return [], "system store (empty)"


@functools.lru_cache(maxsize=4)
def _system_store(path: str) -> tuple[x509.Certificate, ...]:
    import warnings

    with warnings.catch_warnings():  # some distributed roots have serial numbers RFC 5280 forbids
        warnings.simplefilter("ignore")
        return tuple(_load_pem_path(path))


def _load_pem_path(path: str) -> list[x509.Certificate]:
    if os.path.isdir(path):
        out = []
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full):
                try:
                    out.extend(_load_pem_file(full))
                except ValueError:
                    continue
        return out
    return _load_pem_file(path)


def _load_pem_file(path: str) -> list[x509.Certificate]:
    with open(path, "rb") as f:
        data = f.read()
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return [x509.load_der_x509_certificate(data)]
    return x509.load_pem_x509_certificates(data)


def hostname_matches(cert: x509.Certificate, host: str) -> bool:
    """RFC 6125 matching: IP literals against IP SANs; names against DNS SANs (left-most '*' wildcard), or the
    CN when the certificate has no DNS SAN (what OpenSSL and mbedTLS do)."""
    names = sans(cert)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return any(ipaddress.ip_address(a) == ip for a in names["ip"])
    candidates = names["dns"] or [c for c in [_attr(cert.subject, NameOID.COMMON_NAME)] if c]
    host = host.lower().rstrip(".")
    for pattern in candidates:
        pattern = pattern.lower().rstrip(".")
        if pattern == host:
            return True
        if pattern.startswith("*.") and "." in host:
            if host.split(".", 1)[1] == pattern[2:] and host.split(".", 1)[0]:
                return True
    return False


# mbedTLS MBEDTLS_X509_BADCERT_* (harness.device.esp_codes.VERIFY_FLAGS)
FLAG_EXPIRED, FLAG_CN_MISMATCH, FLAG_NOT_TRUSTED, FLAG_FUTURE = 0x01, 0x04, 0x08, 0x200

# Order in which problems name the cause when there are several (the first is the one to fix first).
CAUSE_ORDER = ("no_certificate", "self_signed", "unknown_ca", "missing_intermediate", "expired", "not_yet_valid",
               "clock_skew", "hostname_mismatch")


@dataclass
class ChainCheck:
    ok: bool
    cause: str | None
    problems: list[dict[str, Any]]  # {"cause", "text", "cert"?}
    flags: int  # mbedTLS verify flags a device would set
    chain: list[dict[str, Any]]  # the certificates the server sent, leaf first
    path: list[str]  # subjects from leaf to the trust anchor (when trusted)
    trusted: bool
    hostname_ok: bool
    trust_source: str
    public_issuer: bool = False  # the issuer was found in the system store although --ca named another file

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "chain": self.chain, "path": self.path, "trusted": self.trusted,
                "trust_source": self.trust_source, "hostname_ok": self.hostname_ok,
                "problems": self.problems, "mbedtls_verify_flags": self.flags}


def check_chain(chain_der: list[bytes], host: str, anchors: list[x509.Certificate], *, trust_source: str,
                now: dt.datetime, clock: dt.datetime | None = None,
                system_anchors: list[x509.Certificate] | None = None) -> ChainCheck:
    """Judge the server chain `chain_der` (leaf first) for `host`, against `anchors`, at `now` and at the
    device clock `clock`. Every problem found is listed; `cause` names the first by CAUSE_ORDER."""
    if not chain_der:
        return ChainCheck(False, "no_certificate", [{"cause": "no_certificate", "text": "the server sent no "
                                                    "certificate"}], FLAG_NOT_TRUSTED | 0x40, [], [], False, False,
                          trust_source)
    chain = [x509.load_der_x509_certificate(d) for d in chain_der]
    leaf = chain[0]
    problems: list[dict[str, Any]] = []
    flags = 0

    # --- trust: leaf -> sent intermediates -> anchor
    path = [leaf]
    used = {0}
    anchor = None
    anchor_fps = {a.fingerprint(_sha256()) for a in anchors}
    current = leaf
    for _ in range(10):
        if current.fingerprint(_sha256()) in anchor_fps:
            anchor = current
            break
        parent = next((a for a in anchors if issued_by(current, a)), None)
        if parent is not None:
            anchor = parent
            if parent is not current:
                path.append(parent)
            break
        nxt = next((i for i, c in enumerate(chain) if i not in used and issued_by(current, c)), None)
        if nxt is None:
            break
        used.add(nxt)
        current = chain[nxt]
        path.append(current)
    trusted = anchor is not None
    public_issuer = False
    if not trusted:
        flags |= FLAG_NOT_TRUSTED
        top = path[-1]
        if is_self_signed(top):
            cause = "self_signed" if top is leaf else "unknown_ca"
            text = (f"the server certificate is self-signed ({_name(top.subject)}) and not in {trust_source}"
                    if top is leaf else
                    f"the chain ends at the CA '{_name(top.subject)}', which is not in {trust_source}")
        else:
            incomplete = len(chain) > 1 or bool(ca_issuers_urls(top))
            cause = "missing_intermediate" if incomplete else "unknown_ca"
            where = ca_issuers_urls(top)
            if cause == "missing_intermediate":
                text = (f"the chain is incomplete: '{_name(top.subject)}' was issued by '{_name(top.issuer)}', "
                        f"which the server did not send and {trust_source} does not hold"
                        + (f" (the certificate says it can be fetched from {where[0]})" if where else ""))
            else:
                text = (f"'{_name(top.subject)}' was issued by '{_name(top.issuer)}', which is not in "
                        f"{trust_source} (an unknown CA, or an intermediate the server does not send)")
        if system_anchors:
            public_issuer = any(top.issuer == a.subject and issued_by(top, a) for a in system_anchors)
        problems.append({"cause": cause, "text": text, "cert": _name(top.subject)})

    # --- validity of every certificate we have, at both clocks
    checked = path if trusted else chain
    for when, label in ((now, "local"), (clock, "device")):
        if when is None:
            continue
        for cert in checked:
            before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
            which = "the server certificate" if cert is leaf else f"the CA certificate '{_name(cert.subject)}'"
            if when > after:
                cause = "expired" if label == "local" else "clock_skew"
                flags |= FLAG_EXPIRED
                problems.append({"cause": cause, "clock": label, "cert": _name(cert.subject), "text":
                                 f"{which} expired on {after.isoformat()} ({label} clock: {when.isoformat()})"})
            elif when < before:
                cause = "not_yet_valid" if label == "local" else "clock_skew"
                flags |= FLAG_FUTURE
                problems.append({"cause": cause, "clock": label, "cert": _name(cert.subject), "text":
                                 f"{which} is valid only from {before.isoformat()} ({label} clock: "
                                 f"{when.isoformat()})"})
        if label == "local" and any(p.get("clock") == "local" for p in problems):
            break  # the certificate is bad on any clock; a device clock adds nothing

    # --- host name
    hostname_ok = hostname_matches(leaf, host)
    if not hostname_ok:
        flags |= FLAG_CN_MISMATCH
        listed = sans(leaf)
        names = listed["dns"] + listed["ip"] or [_attr(leaf.subject, NameOID.COMMON_NAME) or "(none)"]
        problems.append({"cause": "hostname_mismatch", "text": f"the certificate is for {', '.join(names)}, not "
                         f"{host!r}"})

    causes = [p["cause"] for p in problems]
    cause = next((c for c in CAUSE_ORDER if c in causes), None)
    return ChainCheck(not problems, cause, problems, flags, [cert_info(c) for c in chain],
                      [_name(c.subject) for c in path] if trusted else [], trusted, hostname_ok, trust_source,
                      public_issuer)


def _sha256():
    return hashes.SHA256()
