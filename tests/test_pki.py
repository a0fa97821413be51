"""The per-run test PKI: files, dates, reuse, and that each broken certificate fails the way it is meant to."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
import json
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from harness.brokers.probe import probe_connack
from harness.errors import ConnectError
from harness.pki import CLIENT_CN, FILES, MANIFEST, STORE_PASSWORD, Pki, generate_pki


def cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_writes_every_file_and_a_readme(pki):
    for attr, path in pki.paths().items():
        assert path.is_file() and path.stat().st_size > 0, attr
    readme = (pki.dir / "README.md").read_text()
    for name, _ in FILES.values():
        assert f"`{name}`" in readme


def test_good_certificates_chain_to_the_ca_and_name_localhost(pki):
    ca = cert(pki.ca)
    server = cert(pki.server_cert)
    server.verify_directly_issued_by(ca)
    cert(pki.client_cert).verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost"}
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    client_cn = cert(pki.client_cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert client_cn == CLIENT_CN


def test_validity_dates_every_broker_accepts(pki):
    """Valid material: already valid, good for years, and notAfter well before 3000 (ejabberd rejects that)."""
    now = dt.datetime.now(dt.timezone.utc)
    for path in (pki.ca, pki.unknown_ca, pki.server_cert, pki.client_cert):
        c = cert(path)
        assert c.not_valid_before_utc < now < c.not_valid_after_utc
        assert now + dt.timedelta(days=365 * 9) < c.not_valid_after_utc < now + dt.timedelta(days=365 * 11)
    assert cert(pki.server_expired_cert).not_valid_after_utc < now
    assert cert(pki.client_expired_cert).not_valid_after_utc < now
    assert cert(pki.server_notyetvalid_cert).not_valid_before_utc > now


def test_combined_and_pkcs12_files_hold_the_server_key_and_cert(pki):
    combined = pki.server_combined.read_bytes()
    assert pki.server_key.read_bytes() in combined and pki.server_cert.read_bytes() in combined
    key, certificate, _ = pkcs12.load_key_and_certificates(pki.server_p12.read_bytes(), STORE_PASSWORD.encode())
    assert key is not None and certificate == cert(pki.server_cert)
    trusted = pkcs12.load_pkcs12(pki.truststore_p12.read_bytes(), STORE_PASSWORD.encode())
    assert [c.certificate for c in trusted.additional_certs] == [cert(pki.ca)]


def test_fresh_set_is_reused_and_stale_one_regenerated(tmp_path):
    first = generate_pki(tmp_path)
    ca_pem = first.ca.read_bytes()
    assert generate_pki(tmp_path).ca.read_bytes() == ca_pem
    # A set written by an older format version is stale.
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "version": 0}))
    assert generate_pki(tmp_path).ca.read_bytes() != ca_pem
    # So is an incomplete one.
    ca_pem = first.ca.read_bytes()
    first.client_key.unlink()
    regenerated = generate_pki(tmp_path)
    assert regenerated.client_key.exists() and regenerated.ca.read_bytes() != ca_pem


def test_relocated_keeps_file_names():
    moved = Pki.at("/host/certs").relocated("/mosquitto/certs")
    assert str(moved.server_cert) == "/mosquitto/certs/server.pem"
    assert str(moved.truststore_p12) == "/mosquitto/certs/truststore.p12"


def handshake_with_server_cert(cert_path, key_path, client_ctx: ssl.SSLContext, server_hostname: str) -> None:
    """One real TLS handshake on the loopback against a server presenting the given certificate."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_path, key_path)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    server_ctx.wrap_socket(conn, server_side=True).close()
                except (ssl.SSLError, OSError):
                    pass  # the client is expected to abort

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=10) as raw:
                client_ctx.wrap_socket(raw, server_hostname=server_hostname).close()
        finally:
            thread.join(10)


def test_good_server_certificate_verifies(pki):
    handshake_with_server_cert(pki.server_cert, pki.server_key, pki.client_context(), "localhost")


@pytest.mark.parametrize("name, expected", [
    ("server_expired", "certificate has expired"),
    ("server_notyetvalid", "certificate is not yet valid"),
    ("server_wronghost", "Hostname mismatch"),
    ("server_unknownca", "unable to get local issuer certificate"),
])
def test_broken_server_certificates_fail_verification(pki, name, expected):
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        handshake_with_server_cert(getattr(pki, f"{name}_cert"), getattr(pki, f"{name}_key"),
                                   pki.client_context(), "localhost")
    assert expected in info.value.verify_message


def test_mtls_listener_accepts_the_client_certificate(mosquitto, pki):
    probe_connack(mosquitto.url("mqtts-mtls"), timeout=10, ca=str(pki.ca), cert=str(pki.client_cert),
                  key=str(pki.client_key))


@pytest.mark.parametrize("which", ["client_untrusted", "client_expired", None])
def test_mtls_listener_refuses_bad_or_missing_client_certificates(mosquitto, pki, which):
    cert_args = {} if which is None else {"cert": str(getattr(pki, f"{which}_cert")),
                                          "key": str(getattr(pki, f"{which}_key"))}
    # With TLS 1.3 the refusal may come as a TLS alert or as a close before CONNACK: either way, no session.
    with pytest.raises(ConnectError):
        probe_connack(mosquitto.url("mqtts-mtls"), timeout=10, ca=str(pki.ca), **cert_args)


def test_private_keys_are_owner_only_and_certificates_readable(tmp_path):
    import stat

    from harness.pki import SECRET_FILES, generate_pki

    pki = generate_pki(tmp_path / "pki")
    for path in pki.paths().values():
        mode = stat.S_IMODE(path.stat().st_mode)
        want = 0o600 if path.name in SECRET_FILES else 0o644
        assert mode == want, f"{path.name}: {oct(mode)}, want {oct(want)}"
    os.chmod(pki.client_key, 0o644)  # a set from an older harness
    generate_pki(tmp_path / "pki")
    assert stat.S_IMODE(pki.client_key.stat().st_mode) == 0o600


def test_docker_copy_of_the_keys_belongs_to_the_image_user(tmp_path):
    import stat

    from harness.brokers.backends.docker import _stage_pki, image_owner
    from harness.pki import generate_pki

    assert image_owner("1883:1883") == (1883, 1883) and image_owner("") == (0, 0)
    assert image_owner("mosquitto") is None
    pki = generate_pki(tmp_path / "pki")
    staged = Path(_stage_pki(pki, tmp_path / "certs", image_owner("1883:1883")))
    key = staged / "server.key"
    if os.geteuid() == 0:
        assert (key.stat().st_uid, stat.S_IMODE(key.stat().st_mode)) == (1883, 0o600)
    else:
        assert stat.S_IMODE(key.stat().st_mode) == 0o644  # no root: the broker's own copy has to be readable
    assert stat.S_IMODE((staged / "ca.pem").stat().st_mode) == 0o644
