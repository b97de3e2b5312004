"""Settings: precedence of flags, AUTOGLM_* variables, seed aliases and the file; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoglm_rpc.startup.config import Settings, given_values, setting_names
from autoglm_rpc.startup.config_checks import source_warnings


def test_defaults_are_valid() -> None:
    settings = Settings.from_sources({}, environ={})
    assert (settings.host, settings.port, settings.device, settings.quantization) == (
        "127.0.0.1", 50051, "auto", "none",
    )  # fmt: skip


def test_precedence_flags_over_env_over_aliases_over_file(tmp_path: Path) -> None:
    config = tmp_path / "autoglm.toml"
    config.write_text('max_batch_size = 4\nport = 6000\nmodel = "/file"\ndevice = "cpu"\n')
    environ = {"BATCH_SIZE": "8", "AUTOGLM_PORT": "7000", "MODEL_PATH": "/alias", "AUTOGLM_MODEL": "/env"}
    settings = Settings.from_sources({"port": 8100, "host": None}, environ=environ, config_file=config)
    assert settings.port == 8100  # flag
    assert settings.model == "/env"  # AUTOGLM_* beats the alias
    assert settings.max_batch_size == 8  # alias beats the file
    assert settings.device == "cpu"  # file beats the default
    assert settings.host == "127.0.0.1"  # a None flag means "not given"


def test_seed_aliases() -> None:
    environ = {"MAX_SEQ_LENGTH": "2048", "DEVICE": "GPU", "MODEL_TYPE": "glm-4", "BATCH_SIZE": "3"}
    settings = Settings.from_sources({}, environ=environ)
    assert (settings.max_seq_len, settings.device, settings.model_id, settings.max_batch_size) == (
        2048, "cuda", "glm-4", 3,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"AUTOGLM_PORT": "eighty"}, "port must be a int"),
        ({"AUTOGLM_PORT": "70000"}, "port must be in"),
        ({"AUTOGLM_DEVICE": "tpu"}, "device must be one of"),
        ({"AUTOGLM_QUANTIZATION": "int4"}, "quantization must be one of"),
        ({"AUTOGLM_MAX_BATCH_SIZE": "0"}, "max_batch_size must be at least 1"),
        ({"AUTOGLM_REFLECTION": "maybe"}, "reflection must be a bool"),
        ({"AUTOGLM_DECODE_MODE": "turbo"}, "decode_mode must be one of"),
        ({"AUTOGLM_KV_CACHE_MEMORY_FRACTION": "1.5"}, r"kv_cache_memory_fraction must be in \(0, 1\]"),
        ({"AUTOGLM_KV_CACHE_MEMORY_FRACTION": "0"}, "kv_cache_memory_fraction must be in"),
        ({"AUTOGLM_KV_CACHE_TOKENS": "0"}, "kv_cache_tokens must be at least 1"),
        ({"AUTOGLM_KV_BLOCK_SIZE": "0"}, r"kv_block_size must be in 1\.\.1024"),
        ({"AUTOGLM_ENABLE_PREFIX_CACHING": "perhaps"}, "enable_prefix_caching must be a bool"),
        (
            {"AUTOGLM_MAX_BATCH_SIZE": "64", "AUTOGLM_MAX_NUM_BATCHED_TOKENS": "32"},
            "must be at least max_batch_size",
        ),
        ({"AUTOGLM_MAX_STOP_SEQUENCES": "-1"}, "max_stop_sequences must be 0 or more"),
        ({"AUTOGLM_MAX_PROMPT_CHARS": "0"}, "max_prompt_chars must be at least 1"),
        ({"AUTOGLM_TLS_CERT": "/c.pem"}, "tls_cert and tls_key go together"),
        ({"AUTOGLM_SERVED_MODEL_NAME": "a,b,a"}, "served_model_name lists a name twice"),
        ({"AUTOGLM_SERVED_MODEL_NAME": "a" * 257}, "must have 1 to 256 characters"),
        ({"AUTOGLM_SERVED_MODEL_NAME": "a,b", "AUTOGLM_MODEL_ID": "b"}, "model_id 'b' and served_model_name a, b"),
        ({"AUTOGLM_TLS_CLIENT_CA": "/ca.pem"}, "tls_client_ca .* needs tls_cert"),
        ({"AUTOGLM_RATE_LIMIT_TOKENS_PER_MINUTE": "-5"}, "rate_limit_tokens_per_minute must be 0"),
    ],
)
def test_bad_values_name_the_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_sources({}, environ=environ)


def test_unknown_file_keys_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("batch = 3\n")
    with pytest.raises(ValueError, match="unknown settings batch"):
        Settings.from_sources({}, environ={}, config_file=config)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"AUTOGLM_RESTART_BACKOFF_INITIAL": "0"}, "restart_backoff_initial must be positive"),
        ({"AUTOGLM_RESTART_BACKOFF_MAX": "0.5"}, "must be at least restart_backoff_initial"),
        ({"AUTOGLM_MAX_RESTARTS_PER_WINDOW": "-1"}, "max_restarts_per_window must be 0 or more"),
        ({"AUTOGLM_RESTART_WINDOW": "-3"}, "restart_window must be positive"),
        ({"AUTOGLM_STREAM_BUFFER_MESSAGES": "0"}, "stream_buffer_messages must be at least 1"),
    ],
)
def test_supervision_and_buffer_settings_are_checked(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_sources({}, environ=environ)


def test_kv_cache_settings_from_flags_environment_and_file(tmp_path: Path) -> None:
    from autoglm_rpc.startup.cli import build_parser

    args = build_parser().parse_args(["serve", "--kv-cache-tokens", "512", "--no-prefix-caching"])
    flags = {key: value for key, value in vars(args).items() if key not in ("command", "config")}
    settings = Settings.from_sources(flags, environ={})
    assert (settings.kv_cache_tokens, settings.enable_prefix_caching, settings.kv_block_size) == (512, False, 16)
    config = tmp_path / "autoglm.toml"
    config.write_text("kv_cache_tokens = 2048\nkv_block_size = 32\n")
    settings = Settings.from_sources({}, environ={"AUTOGLM_KV_CACHE_TOKENS": "1024"}, config_file=config)
    assert (settings.kv_cache_tokens, settings.kv_block_size, settings.enable_prefix_caching) == (1024, 32, True)


def test_the_http_api_settings(tmp_path: Path) -> None:
    defaults = Settings.from_sources({}, environ={})
    assert (defaults.http, defaults.http_host, defaults.http_port) == (True, None, 8000)
    config = tmp_path / "autoglm.toml"
    config.write_text('http_port = 9000\nhttp_host = "0.0.0.0"\n')
    settings = Settings.from_sources({"http": False}, environ={"AUTOGLM_HTTP_PORT": "0"}, config_file=config)
    assert (settings.http, settings.http_host, settings.http_port) == (False, "0.0.0.0", 0)
    assert Settings.from_sources({}, environ={"AUTOGLM_HTTP": "off"}).http is False
    with pytest.raises(ValueError, match=r"http_port must be in 0\.\.65535"):
        Settings.from_sources({"http_port": 70000}, environ={})


def test_served_model_names_from_flags_environment_and_file(tmp_path: Path) -> None:
    """One or more names; model_id is a synonym for a single one (so agreeing with the first is fine)."""
    environ = {"AUTOGLM_SERVED_MODEL_NAME": " autoglm-phone-9b , glm-4.1v ,"}
    assert Settings.from_sources({}, environ=environ).served_model_name == ("autoglm-phone-9b", "glm-4.1v")
    config = tmp_path / "names.toml"
    config.write_text('[checkpoint]\nserved_model_name = ["autoglm-phone-9b", "phone"]\n')
    from_file = Settings.from_sources({"model_id": "autoglm-phone-9b"}, environ={}, config_file=config)
    assert from_file.served_model_name == ("autoglm-phone-9b", "phone")
    assert Settings.from_sources({"served_model_name": ["x"]}, environ={}).served_model_name == ("x",)
    config.write_text("served_model_name = [1, 2]\n")
    with pytest.raises(ValueError, match="served_model_name must be a list of strings"):
        Settings.from_sources({}, environ={}, config_file=config)


def test_two_listeners_on_one_port_are_refused_unless_their_addresses_differ() -> None:
    with pytest.raises(ValueError, match="metrics_port 9000 is also http_port"):
        Settings.from_sources({"http_port": 9000, "metrics_port": 9000}, environ={})
    with pytest.raises(ValueError, match="http_port 9000 is also port"):
        Settings.from_sources({"port": 9000, "http_port": 9000, "http_host": "0.0.0.0"}, environ={})
    apart = {"port": 9000, "http_port": 9000, "http_host": "10.0.0.1", "metrics_port": 0, "http": True}
    assert Settings.from_sources(apart, environ={}).http_port == 9000  # two addresses: no overlap
    assert Settings.from_sources({"port": 9000, "http_port": 9000, "http": False}, environ={}).port == 9000


def test_what_is_given_without_effect_is_warned_of() -> None:
    environ = {"AUTOGLM_GRACE": "5", "AUTOGLM_PORT": "1", "AUTOGLM_CONFIG": "", "AUTOGLM_RPC_PORT": "tcp://x"}
    given = given_values({"http": False}, environ={"AUTOGLM_HTTP_HOST": "0.0.0.0"})
    warnings = source_warnings(given, environ, setting_names())
    assert warnings == [
        "AUTOGLM_GRACE is not a setting and is ignored (did you mean AUTOGLM_GRACE_PERIOD?)",
        "http_host is set but the HTTP API is off (http false, --no-http): it is ignored",
    ]
    assert source_warnings(given_values({}, environ={"AUTOGLM_HTTP": "off"}), {}, setting_names()) == []
