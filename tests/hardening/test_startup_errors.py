"""Start-up errors end `autoglm-rpc serve` with one clear line and exit status 1 or 2, never a traceback.

Each case runs the real command line against a broken checkpoint, a held port or mismatched TLS files; the line
names the setting at fault. What is given but has no effect (an `AUTOGLM_*` typo, the HTTP port with the HTTP
API off) is one warning line each.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoglm_rpc.security import tls
from tests.security.pki import Pki
from tests.support import ServerThread

ROOT = Path(__file__).resolve().parents[2]
CLI = [
    sys.executable,
    "-m",
    "autoglm_rpc.startup.cli",
    "serve",
    "--device",
    "cpu",
    "--workers",
    "1",
    "--log-format",
    "text",
    "--http-port",
    "0",
]


def _serve(*args: str, environ: dict[str, str] | None = None) -> tuple[int, str]:
    result = subprocess.run(
        [*CLI, *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=os.environ | (environ or {}),
    )  # fmt: skip
    return result.returncode, result.stderr


def _assert_one_clear_line(code: int, stderr: str, phrase: str) -> None:
    assert code in (1, 2), stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "ERROR" in line or line.startswith("E")]
    assert len(errors) == 1 and phrase in errors[0], stderr


@pytest.fixture()
def broken(tmp_path: Path, glm_checkpoint: Path) -> Iterator[Path]:
    copy = tmp_path / "checkpoint"
    shutil.copytree(glm_checkpoint, copy)
    yield copy


def test_an_empty_checkpoint_directory(tmp_path: Path) -> None:
    _assert_one_clear_line(*_serve("--model", str(tmp_path), "--port", "0"), "config.json is missing")


def test_a_missing_or_broken_config_or_tokenizer(broken: Path) -> None:
    (broken / "tokenizer.json").unlink()
    _assert_one_clear_line(*_serve("--model", str(broken), "--port", "0"), "has no tokenizer.json")
    (broken / "config.json").write_text("{not json")
    _assert_one_clear_line(*_serve("--model", str(broken), "--port", "0"), "cannot read")


def test_a_port_held_by_another_program(glm_checkpoint: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        _assert_one_clear_line(*_serve("--model", str(glm_checkpoint), "--port", str(port)), "is in use")


def test_an_http_port_held_by_another_program(glm_checkpoint: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        args = ("--model", str(glm_checkpoint), "--port", "0", "--http-port", str(port))
        _assert_one_clear_line(*_serve(*args), f"http: port {port} on 127.0.0.1 is in use")


def test_a_second_server_on_a_served_port_is_refused(glm_server: ServerThread, glm_checkpoint: Path) -> None:
    port = glm_server.target.rsplit(":", 1)[1]
    _assert_one_clear_line(
        *_serve("--model", str(glm_checkpoint), "--port", port), f"port {port} on 127.0.0.1 is in use"
    )
    with glm_server.client() as client:  # the first server still serves
        assert client.generate(prompt="still here", max_new_tokens=2).usage.completion_tokens == 2


def test_a_tls_key_that_is_not_the_certificates(glm_checkpoint: Path, pki: Pki) -> None:
    tls_args = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key))
    _assert_one_clear_line(*_serve("--model", str(glm_checkpoint), "--port", "0", *tls_args), "does not match")


def test_an_expired_server_certificate_is_flagged(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    chain = pki.server_cert.read_bytes()
    with caplog.at_level(logging.ERROR, logger="autoglm_rpc.security.tls"):
        tls.warn_if_expired(chain)
        assert not caplog.records
        tls.warn_if_expired(chain, now=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30))
    assert "expired" in caplog.text


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


GARBLED_CERTIFICATE = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


def test_a_client_ca_that_does_not_parse_is_named_not_taken_for_a_port_in_use(
    glm_checkpoint: Path, pki: Pki, tmp_path: Path
) -> None:
    garbled = tmp_path / "ca.pem"
    garbled.write_text(GARBLED_CERTIFICATE)
    tls_args = (
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(garbled),
    )
    code, stderr = _serve("--model", str(glm_checkpoint), "--port", "0", *tls_args)
    _assert_one_clear_line(code, stderr, f"tls_client_ca: {garbled} holds no valid PEM certificate")
    assert "in use" not in stderr, stderr


def test_a_certificate_that_does_not_parse_is_not_blamed_on_the_key(
    glm_checkpoint: Path, pki: Pki, tmp_path: Path
) -> None:
    garbled = tmp_path / "cert.pem"
    garbled.write_text(GARBLED_CERTIFICATE)
    code, stderr = _serve(
        "--model", str(glm_checkpoint), "--port", "0", "--tls-cert", str(garbled), "--tls-key", str(pki.server_key)
    )
    _assert_one_clear_line(code, stderr, f"tls_cert: {garbled} holds no valid PEM certificate")
    assert "tls_key" not in stderr, stderr


def test_a_metrics_port_that_is_the_http_port_names_both(glm_checkpoint: Path) -> None:
    port = str(_free_port())
    code, stderr = _serve(
        "--model", str(glm_checkpoint), "--port", "0", "--http-port", port, "--metrics-port", port
    )
    _assert_one_clear_line(code, stderr, f"metrics_port {port} is also http_port")
    assert code == 2 and "excepthook" not in stderr, stderr


def test_a_metrics_port_held_by_another_program_is_named(glm_checkpoint: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, stderr = _serve("--model", str(glm_checkpoint), "--port", "0", "--metrics-port", str(port))
    _assert_one_clear_line(code, stderr, f"metrics: port {port} on 127.0.0.1 is in use")
    assert "--metrics-port" in stderr and "excepthook" not in stderr, stderr


def test_settings_given_without_effect_are_one_warning_each(tmp_path: Path) -> None:
    """The server goes on (here to the error of an empty checkpoint directory): a warning, not a refusal."""
    environ = {"AUTOGLM_MAX_BATCH": "4", "AUTOGLM_RPC_SERVICE_HOST": "10.0.0.1"}  # the second: a Kubernetes link
    code, stderr = _serve(
        "--model", str(tmp_path), "--port", "0", "--no-http", "--http-port", "9000", environ=environ
    )
    assert code == 1, stderr
    warnings = [line for line in stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 2, stderr
    assert (
        "AUTOGLM_MAX_BATCH is not a setting and is ignored (did you mean AUTOGLM_MAX_BATCH_SIZE?)" in warnings[0]
    )
    assert "http_port is set but the HTTP API is off" in warnings[1]
