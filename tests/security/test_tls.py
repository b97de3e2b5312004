"""TLS and mutual TLS on the gRPC and HTTP ports, with certificates made in the test."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
import httpx
import pytest

from autoglm_rpc.client import AutoglmError, Client
from autoglm_rpc.security import tls
from tests.security.conftest import gateway_only
from tests.security.pki import Pki
from tests.support import server_settings


def _target(app) -> str:
    return f"127.0.0.1:{app.port}"


def test_tls_serves_tls_clients_and_refuses_plaintext(glm_checkpoint: Path, pki: Pki) -> None:
    settings = server_settings(glm_checkpoint, model_id="tiny-glm", tls_cert=str(pki.server_cert),
                               tls_key=str(pki.server_key))  # fmt: skip
    with gateway_only(settings) as app:
        with Client(_target(app), root_certificates=pki.ca) as client:
            assert client.server_info(timeout=10).default_model == "tiny-glm"
        with Client(_target(app)) as plaintext, pytest.raises(AutoglmError) as caught:
            plaintext.server_info(timeout=10)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        # A client that does not trust the server's CA refuses the handshake itself.
        wrong_roots = Client(_target(app), root_certificates=pki.rogue_client_cert)
        with wrong_roots, pytest.raises(AutoglmError) as caught:
            wrong_roots.server_info(timeout=10)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate_signed_by_the_ca(glm_checkpoint: Path, pki: Pki) -> None:
    settings = server_settings(glm_checkpoint, model_id="tiny-glm", tls_cert=str(pki.server_cert),
                               tls_key=str(pki.server_key), tls_client_ca=str(pki.ca))  # fmt: skip
    with gateway_only(settings) as app:
        signed = {"certificate_chain": pki.client_cert, "private_key": pki.client_key}
        with Client(_target(app), root_certificates=pki.ca, **signed) as client:
            assert client.server_info(timeout=10).default_model == "tiny-glm"
        rogue = {"certificate_chain": pki.rogue_client_cert, "private_key": pki.rogue_client_key}
        for refused in ({}, rogue):
            client = Client(_target(app), root_certificates=pki.ca, **refused)
            with client, pytest.raises(AutoglmError) as caught:
                client.server_info(timeout=10)
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        with Client(_target(app)) as plaintext, pytest.raises(AutoglmError):
            plaintext.server_info(timeout=10)


def test_the_http_api_uses_the_same_certificate_and_client_ca(glm_checkpoint: Path, pki: Pki) -> None:
    settings = server_settings(glm_checkpoint, model_id="tiny-glm", tls_cert=str(pki.server_cert),
                               tls_key=str(pki.server_key), tls_client_ca=str(pki.ca))  # fmt: skip
    with gateway_only(settings) as app:
        url = f"https://127.0.0.1:{app.http.port}/v1/models"
        signed = ssl.create_default_context(cafile=str(pki.ca))
        signed.load_cert_chain(pki.client_cert, pki.client_key)
        assert httpx.get(url, verify=signed, timeout=10).json()["data"][0]["id"] == "tiny-glm"
        rogue = ssl.create_default_context(cafile=str(pki.ca))
        rogue.load_cert_chain(pki.rogue_client_cert, pki.rogue_client_key)
        for context in (ssl.create_default_context(cafile=str(pki.ca)), rogue):
            with pytest.raises(httpx.TransportError):
                httpx.get(url, verify=context, timeout=10).raise_for_status()
        with pytest.raises(httpx.TransportError):
            httpx.get(url.replace("https:", "http:"), timeout=10)


def test_unreadable_or_non_pem_files_name_the_setting(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ValueError, match="tls_cert: cannot read"):
        tls.server_credentials(str(tmp_path / "missing.pem"), str(pki.server_key))
    with pytest.raises(ValueError, match=r"tls_key: .* holds no PEM PRIVATE KEY"):
        tls.server_credentials(str(pki.server_cert), str(pki.server_cert))
    with pytest.raises(ValueError, match="tls_client_ca"):
        tls.server_credentials(str(pki.server_cert), str(pki.server_key), str(pki.server_key))
