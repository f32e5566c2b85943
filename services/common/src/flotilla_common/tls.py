"""TLS material for clusters: one self-signed keypair per cluster."""

from __future__ import annotations

import datetime
import os
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["load_keypair", "new_keypair"]


def new_keypair(cluster_name: str) -> tuple[str, str]:
    """A self-signed cert and its key (PEM text) for ``cluster_name``.

    Like dask-gateway's (CN ``dask-internal``, valid a year, PKCS#8 PEM key) but ECDSA
    P-256 rather than RSA 2048: a key in microseconds instead of tens of milliseconds
    on the create path, and cheaper TLS handshakes for every client and worker. The
    one cert is the CA, the scheduler's and workers' server cert, and the user's
    client cert; nothing checks host names, only that the chain verifies.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-internal")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(cluster_name), x509.DNSName("dask-internal")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert_pem, key_pem


def load_keypair(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """``context.load_cert_chain`` from PEM text, which ``ssl`` reads only from a file: an
    anonymous in-memory one (memfd), so the key never touches a disk."""
    fd = os.memfd_create("flotilla-keypair", os.MFD_CLOEXEC)
    try:
        os.write(fd, (cert_pem + key_pem).encode())
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
