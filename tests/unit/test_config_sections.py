"""Settings sections: every field of every section is reachable by its flat name from a TOML file (top level or
its section's table), from `AUTOGLM_<NAME>` and from its `serve` flag, and lands in its section; the engine
section reaches the workers' `WorkerConfig` by name."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest

from autoglm_rpc.core.config_sections import EngineSettings, PoolSettings
from autoglm_rpc.startup.cli import build_parser
from autoglm_rpc.startup.config import SECTION_OF, SECTIONS, Settings, setting_names
from autoglm_rpc.startup.devices import GATEWAY_ONLY_ENGINE_SETTINGS, plan_workers, worker_settings
from workers.protocol import WorkerConfig

# Settings whose values are one of a few words: a valid value other than the default.
CHOICES = {
    "device": "cuda",
    "dtype": "bfloat16",
    "quantization": "int8",
    "decode_mode": "eager",
    "log_level": "DEBUG",
    "log_format": "text",
    "otlp_protocol": "http/protobuf",
    "kernel_capture": "always",
    "chat_template_content_format": "openai",
}
# Settings that are lists of names: model_id is a synonym for the first served name, so the two samples agree.
LISTS = {"served_model_name": ("x-model_id", "x-alias")}
# Settings with no `serve` flag (file and environment only): api_keys because a secret on the command line shows
# in `ps`; the others never had one. A new setting needs a flag or a place here.
NO_FLAG = {"api_keys", "grace_period", "max_message_bytes", "worker_start_timeout"}


def _sample(name: str) -> Any:
    """A value for setting `name` that differs from its default and, all together, passes validation."""
    field = next(f for f in fields(SECTIONS[SECTION_OF[name]]) if f.name == name)
    default = field.default
    assert default is not MISSING, f"{name} has no default"
    if name in CHOICES:
        return CHOICES[name]
    if name in LISTS:
        return LISTS[name]
    if field.type == "bool":
        return not default
    if field.type.startswith("int"):
        return 2 if default is None else default + 1
    if field.type.startswith("float"):
        return 0.5 if default is None else default / 2  # halving stays inside (0, 1] and keeps max >= initial
    return f"x-{name}"


SAMPLES = {name: _sample(name) for name in setting_names()}


def _assert_samples(settings: Settings) -> None:
    for name, value in SAMPLES.items():
        assert getattr(getattr(settings, SECTION_OF[name]), name) == value, name


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return f"[{', '.join(_toml(item) for item in value)}]"
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _env(value: Any) -> str:
    """As `AUTOGLM_<NAME>` spells it: a list comma-separated."""
    return ",".join(value) if isinstance(value, tuple) else _toml(value).strip('"')


def test_names_are_unique_across_sections_and_never_a_section_name() -> None:
    num_fields = sum(len(fields(kind)) for kind in SECTIONS.values())
    assert len(SECTION_OF) == num_fields, "a setting name is used by two sections"
    assert not set(SECTIONS) & set(SECTION_OF)
    defaults = Settings()
    assert [name for name, value in SAMPLES.items() if getattr(defaults, name) == value] == []


def test_every_setting_round_trips_from_a_flat_file(tmp_path: Path) -> None:
    config = tmp_path / "flat.toml"
    config.write_text("".join(f"{name} = {_toml(value)}\n" for name, value in SAMPLES.items()))
    _assert_samples(Settings.from_sources({}, environ={}, config_file=config))


def test_every_setting_round_trips_from_section_tables(tmp_path: Path) -> None:
    lines = []
    for section, kind in SECTIONS.items():
        lines.append(f"[{section}]\n")
        lines += [f"{f.name} = {_toml(SAMPLES[f.name])}\n" for f in fields(kind)]
    config = tmp_path / "tables.toml"
    config.write_text("".join(lines))
    _assert_samples(Settings.from_sources({}, environ={}, config_file=config))


def test_every_setting_round_trips_from_the_environment() -> None:
    environ = {f"AUTOGLM_{name.upper()}": _env(value) for name, value in SAMPLES.items()}
    _assert_samples(Settings.from_sources({}, environ=environ))


def test_every_setting_has_a_serve_flag() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    flags = {action.dest: action for action in serve._actions if action.option_strings}
    assert not set(setting_names()) - NO_FLAG - set(flags), "settings without a flag"
    argv = ["serve"]
    for name in setting_names():
        if name in NO_FLAG:
            continue
        action = flags[name]
        if isinstance(action, argparse._StoreConstAction):
            assert action.const == SAMPLES[name], f"--{name}: the flag sets its non-default value"
            argv.append(action.option_strings[0])
        elif isinstance(SAMPLES[name], tuple):
            argv += [action.option_strings[0], *SAMPLES[name]]
        else:
            argv += [action.option_strings[0], str(SAMPLES[name])]
    args = vars(parser.parse_args(argv))
    given = {key: value for key, value in args.items() if key not in ("command", "config")}
    environ = {f"AUTOGLM_{name.upper()}": _env(SAMPLES[name]) for name in NO_FLAG}
    settings = Settings.from_sources(given, environ=environ)
    _assert_samples(settings)


def test_flat_names_and_sections_build_the_same_settings() -> None:
    by_name = Settings(max_batch_size=4, max_num_batched_tokens=64, grace_period=1.0)
    by_section = Settings(
        engine=EngineSettings(max_batch_size=4, max_num_batched_tokens=64), pool=PoolSettings(grace_period=1.0)
    )
    assert by_name == by_section
    assert (by_name.max_batch_size, by_name.engine.max_batch_size, by_name.grace_period) == (4, 4, 1.0)
    assert Settings(engine=EngineSettings(max_batch_size=4), max_batch_size=8).engine.max_batch_size == 8
    with pytest.raises(TypeError, match="unknown setting 'batch'"):
        Settings(batch=3)
    with pytest.raises(TypeError, match="section engine must be a EngineSettings"):
        Settings(engine=PoolSettings())
    with pytest.raises(AttributeError, match="batch"):
        _ = Settings().batch


def test_a_setting_in_the_wrong_table_is_refused_by_its_place(tmp_path: Path) -> None:
    config = tmp_path / "wrong.toml"
    config.write_text("[engine]\nport = 1\n")
    with pytest.raises(ValueError, match=r"unknown settings engine\.port"):
        Settings.from_sources({}, environ={}, config_file=config)


def test_the_engine_section_reaches_every_worker_by_name() -> None:
    passed_on = {f.name for f in fields(EngineSettings)} - GATEWAY_ONLY_ENGINE_SETTINGS
    assert not passed_on - {f.name for f in fields(WorkerConfig)}, "engine settings the workers do not take"
    settings = Settings(**{**SAMPLES, "tensor_parallel_size": 1})
    shared = worker_settings(settings)
    served = argparse.Namespace(source="/models/glm", model_id="glm", max_context_tokens=4096)
    configs = plan_workers(settings, served, gpus=["0", "1"])  # type: ignore[arg-type]
    assert len(configs) == SAMPLES["workers"]
    for config in configs:
        for name in passed_on - {"device"}:
            assert getattr(config, name) == getattr(settings.engine, name), name
        assert {name: getattr(config, name) for name in shared} == shared
        assert config.device == "cuda" and config.log_level == SAMPLES["log_level"]
    assert shared["weights_manifest"] == SAMPLES["weights_manifest"]
    assert shared["allow_pickle_weights"] is SAMPLES["allow_pickle_weights"]
