"""TLS for the gRPC port: server certificate and key, and mutual TLS when a client CA is configured.

With `tls_client_ca`, a client must present a certificate signed by that CA or the handshake fails (the call
never reaches the server's code). Files are read once at start; a missing or non-PEM file stops the server with a
message naming the setting.
"""

from __future__ import annotations

from pathlib import Path

import grpc


def _read_pem(setting: str, path: str, marker: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data or marker.encode() not in data:
        raise ValueError(f"{setting}: {path} holds no PEM {marker}")
    return data


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port`; client certificates are required exactly when `client_ca` is set."""
    chain = _read_pem("tls_cert", cert, "CERTIFICATE")
    private_key = _read_pem("tls_key", key, "PRIVATE KEY")
    roots = None if client_ca is None else _read_pem("tls_client_ca", client_ca, "CERTIFICATE")
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )
