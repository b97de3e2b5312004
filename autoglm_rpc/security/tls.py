"""TLS for the gRPC port: server certificate and key, and mutual TLS when a client CA is configured.

With `tls_client_ca`, a client must present a certificate signed by that CA or the handshake fails (the call
never reaches the server's code). Files are read once at start; a missing or non-PEM file stops the server with a
message naming the setting, and so does a file whose PEM does not parse or a key that is not the certificate's
(checked here, because grpc would only say "Failed to bind to address"). A server certificate that has expired,
or is not valid yet, is logged as an error at start: clients will refuse it, but the operator may be rotating
it, so the server still starts.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path

import grpc

logger = logging.getLogger(__name__)


def _read_pem(setting: str, path: str, marker: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data or marker.encode() not in data:
        raise ValueError(f"{setting}: {path} holds no PEM {marker}")
    return data


def _parse_certificates(setting: str, path: str, data: bytes) -> None:
    """Raise ValueError naming `setting` unless `data` parses as PEM certificates (grpc would fail the bind)."""
    from cryptography import x509  # only with TLS configured

    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{setting}: {path} holds no valid PEM certificate (its contents do not parse)") from None


def _parse_private_key(path: str, data: bytes) -> None:
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted: grpc takes no passphrase
        raise ValueError(f"tls_key: {path} is encrypted; give the key unencrypted") from None
    except ValueError:
        raise ValueError(f"tls_key: {path} holds no valid PEM private key (its contents do not parse)") from None


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port`; client certificates are required exactly when `client_ca` is set.

    Each file is parsed here, so that what is wrong is said of the setting that holds it: grpc would report any
    of them as a failure to bind the port, and `ssl` a garbled certificate as a key that does not match it."""
    chain = _read_pem("tls_cert", cert, "CERTIFICATE")
    _parse_certificates("tls_cert", cert, chain)
    private_key = _read_pem("tls_key", key, "PRIVATE KEY")
    _parse_private_key(key, private_key)
    check_key_matches(cert, key)
    warn_if_expired(chain)
    roots = None if client_ca is None else _read_pem("tls_client_ca", client_ca, "CERTIFICATE")
    if roots is not None:
        _parse_certificates("tls_client_ca", client_ca, roots)
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )


def check_key_matches(cert: str, key: str) -> None:
    """Raise ValueError unless `key` is the private key of the first certificate in `cert`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ValueError(
            f"tls_key: {key} does not match the certificate in tls_cert {cert} ({exc.reason or exc}); "
            "give the key the certificate was issued for"
        ) from None


def warn_if_expired(chain: bytes, now: datetime.datetime | None = None) -> None:
    """Log an error when the server certificate (the chain's first) is outside its validity period."""
    from cryptography import x509  # only with TLS configured

    certificate = x509.load_pem_x509_certificates(chain)[0]
    now = now or datetime.datetime.now(datetime.UTC)
    if now > certificate.not_valid_after_utc:
        logger.error(
            "tls_cert: the server certificate expired on %s; clients will refuse it: renew it",
            certificate.not_valid_after_utc.isoformat(),
        )
    elif now < certificate.not_valid_before_utc:
        logger.error(
            "tls_cert: the server certificate is not valid before %s; clients will refuse it until then",
            certificate.not_valid_before_utc.isoformat(),
        )
