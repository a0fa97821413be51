"""Certificates harness.pki does not make: a chain with an intermediate CA, for the missing-intermediate case.

harness.pki's CAs have pathLenConstraint 0 (they may sign leaves only), so the chain gets its own root:
root -> intermediate -> server leaf for localhost/127.0.0.1/::1. The leaf names its issuer's certificate in an
Authority Information Access extension, as public CAs' leaves do (never fetched: the URL is under .invalid).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
)

from harness.pki import SERVER_NAMES

INTERMEDIATE_URL = "http://ca.mqtt-harness.invalid/intermediate.der"


@dataclass(frozen=True)
class Chain:
    dir: Path
    root: Path  # trust this one (--ca)
    intermediate: Path
    leaf: Path  # the server certificate alone: a server serving only this misses the intermediate
    fullchain: Path  # leaf + intermediate: a correct server certfile
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mqtt-harness chain"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(subject: x509.Name, key, issuer: x509.Name, issuer_key, now: dt.datetime, path_length: int | None):
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(issuer_key, hashes.SHA256()))


def make_chain(directory: str | os.PathLike) -> Chain:
    """Write root.pem, intermediate.pem, server-leaf.pem, server-fullchain.pem and server-chain.key; reuses a set
    already there."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    chain = Chain(d, d / "chain-root.pem", d / "chain-intermediate.pem", d / "server-leaf.pem",
                  d / "server-fullchain.pem", d / "server-chain.key")
    if all(p.exists() for p in (chain.root, chain.intermediate, chain.leaf, chain.fullchain, chain.key)):
        return chain
    now = dt.datetime.now(dt.UTC)
    root_key, int_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root_name, int_name = _name("mqtt-harness chain root CA"), _name("mqtt-harness intermediate CA")
    root = _ca(root_name, root_key, root_name, root_key, now, None)
    inter = _ca(int_name, int_key, root_name, root_key, now, 0)
    alt = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() or ":" in n else x509.DNSName(n)
           for n in SERVER_NAMES]
    leaf = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(int_name)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(int_key.public_key()), critical=False)
            .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(INTERMEDIATE_URL))]),
                critical=False)
            .sign(int_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = {
        chain.root: root.public_bytes(pem), chain.intermediate: inter.public_bytes(pem),
        chain.leaf: leaf.public_bytes(pem), chain.fullchain: leaf.public_bytes(pem) + inter.public_bytes(pem),
        chain.key: leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    }
    for path, data in files.items():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.chmod(tmp, 0o600 if path == chain.key else 0o644)  # keys private, as harness.pki makes them
        os.replace(tmp, path)
    return chain
