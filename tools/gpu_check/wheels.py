"""The wheels a GPU check brings along, which of them a machine needs, and `make gpu-wheels` to download them.

The GPU machine's image has Python 3.12, torch with CUDA, transformers, tokenizers, safetensors, accelerate,
jinja2, prometheus-client, grpcio, protobuf and pytest, and it cannot reach a package registry. What the
gateway, the workers, the benchmark and the tracing A/B import beyond that travels as wheels: bitsandbytes (nf4),
the gRPC health / reflection / status packages, OpenTelemetry with its OTLP/gRPC exporter (the HTTP exporter is
imported only when OTLP/HTTP is chosen, which the check never does) and googleapis-common-protos. grpcio and
protobuf are there, but perhaps older than the generated stubs need (grpcio 1.84 service stubs, protobuf 7.35
gencode): their wheels come along and are installed only where the version there does not satisfy `accept`.
Every version is the one the test suite runs with here.

The OpenAI-compatible HTTP API's stack (fastapi, starlette, uvicorn, pydantic and theirs) does not come along:
the gateway imports it only when the HTTP face is on, and the check runs the service gRPC-only (`http` off in
the benchmark's service stages unless `service_http` is asked for, in the tracing A/B and in the gpu-marked
server test), which keeps it out of the carry.

    python -m tools.gpu_check.wheels --dest .gpu-wheels    # download, check, report the size (make gpu-wheels)
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
# What the device machine carries: the working tree plus ignored paths, 64 MiB in all.
CARRY_LIMIT_BYTES = 64 * 2**20
PYTHON_VERSION = "3.12"
# pip matches manylinux tags exactly: every tag a cp312 x86_64 wheel of these packages is published under.
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
# Distributions the GPU machine's image has (by name; their versions are read there, at install time).
IMAGE_PROVIDES = frozenset(
    {
        "torch",
        "numpy",
        "packaging",
        "typing-extensions",
        "requests",
        "psutil",
        "pyyaml",
        "huggingface-hub",
        "safetensors",
        "tokenizers",
        "transformers",
        "accelerate",
        "jinja2",
        "prometheus-client",
        "pytest",
        "grpcio",
        "protobuf",
    }
)


@dataclass(frozen=True, slots=True)
class Wheel:
    """One distribution to bring: `version` is downloaded; an installed version inside `accept` is kept."""

    name: str
    version: str
    accept: str = ""  # a specifier; empty: exactly `version`

    @property
    def requirement(self) -> str:
        return f"{self.name}{self.accept or '==' + self.version}"


WHEELS = (
    Wheel("bitsandbytes", "0.50.2"),  # nf4 (its manylinux wheel holds the CUDA 13 library), 43 MB
    Wheel("grpcio-health-checking", "1.85.1"),
    Wheel("grpcio-reflection", "1.85.1"),
    Wheel("grpcio-status", "1.85.3"),
    Wheel("googleapis-common-protos", "1.76.0", ">=1.57,<2"),
    Wheel("opentelemetry-api", "1.45.2"),
    Wheel("opentelemetry-sdk", "1.45.2"),
    Wheel("opentelemetry-semantic-conventions", "0.66b2"),
    Wheel("opentelemetry-proto", "1.45.2"),
    Wheel("opentelemetry-exporter-otlp-common", "0.66b2"),
    Wheel("opentelemetry-exporter-otlp-proto-common", "1.45.2"),
    Wheel("opentelemetry-exporter-otlp-proto-grpc", "1.45.2"),
    # grpcio-health-checking / -reflection 1.85.1 need grpcio >= 1.85.1 and protobuf >= 7.35.1.
    Wheel("grpcio", "1.85.3", ">=1.85.1"),
    Wheel("protobuf", "7.36.2", ">=7.35.1,<8"),
)


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return name.lower().replace("_", "-").replace(".", "-")


def installed_versions() -> dict[str, str]:
    """Every distribution this interpreter sees, canonical name -> version."""
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def needed(wheels: tuple[Wheel, ...], installed: dict[str, str]) -> list[Wheel]:
    """The wheels to install: missing here, or here in a version outside their `accept`."""
    from packaging.requirements import Requirement

    missing = []
    for wheel in wheels:
        have = installed.get(canonical(wheel.name))
        if have is None or not Requirement(wheel.requirement).specifier.contains(have, prereleases=True):
            missing.append(wheel)
    return missing


def wheel_file(directory: Path, wheel: Wheel) -> Path | None:
    """The downloaded file of `wheel` in `directory`, or None."""
    stem = f"{wheel.name.replace('-', '_')}-{wheel.version}-".lower()
    matches = sorted(p for p in directory.glob("*.whl") if p.name.lower().startswith(stem))
    return matches[0] if matches else None


def install_command(python: str, files: list[Path], target: Path) -> list[str]:
    """pip, offline, into `target` (put first on PYTHONPATH): nothing resolved, fetched or compiled."""
    return [
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--target",
        str(target),
        *map(str, files),
    ]


def download(dest: Path, wheels: tuple[Wheel, ...] = WHEELS) -> None:
    """Download every wheel for CPython 3.12 on manylinux x86_64 into `dest` (pip skips files already there)."""
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        *platforms,
        "--dest",
        str(dest),
        *(f"{w.name}=={w.version}" for w in wheels),
    ]
    subprocess.run(command, check=True)


def unmet_requirements(dest: Path, wheels: tuple[Wheel, ...] = WHEELS) -> list[str]:
    """Requirements of the downloaded wheels (on Python 3.12, Linux) that neither a wheel nor the image meets."""
    from packaging.requirements import Requirement

    environment = {"python_version": PYTHON_VERSION, "sys_platform": "linux", "platform_system": "Linux"}
    carried = {canonical(w.name): w.version for w in wheels}
    problems = []
    for wheel in wheels:
        path = wheel_file(dest, wheel)
        if path is None:
            problems.append(f"{wheel.name}=={wheel.version}: no wheel in {dest}")
            continue
        for line in _requires_dist(path):
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({**environment, "extra": ""}):
                continue
            name = canonical(requirement.name)
            if name in carried:
                if not requirement.specifier.contains(carried[name], prereleases=True):
                    problems.append(f"{wheel.name} needs {requirement}; the wheel brought is {carried[name]}")
            elif name not in IMAGE_PROVIDES:
                problems.append(f"{wheel.name} needs {requirement}: neither brought nor in the GPU image")
    return problems


def working_tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what travels besides carried paths: tracked files and untracked files git does not ignore."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    paths = (root / name for name in listing.decode().split("\0") if name)
    return sum(path.stat().st_size for path in paths if path.is_file() and not path.is_symlink())


def _requires_dist(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(archive.read(name).decode()).get_all("Requires-Dist") or []


def _tested_versions_differ(wheels: tuple[Wheel, ...]) -> list[str]:
    here = installed_versions()
    return [
        f"{w.name}: {w.version} brought, {here.get(canonical(w.name))} here"
        for w in wheels
        if here.get(canonical(w.name)) != w.version
    ]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check.wheels", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".gpu-wheels"), help="folder for the wheels")
    args = parser.parse_args(argv)
    download(args.dest)
    files = [wheel_file(args.dest, w) for w in WHEELS]
    size = sum(f.stat().st_size for f in files if f is not None)
    for path in sorted((f for f in files if f is not None), key=lambda f: -f.stat().st_size):
        logger.info("%8.1f MB  %s", path.stat().st_size / 1e6, path.name)
    strays = sorted(set(args.dest.glob("*.whl")) - set(files))
    for stray in strays:
        logger.warning("not in the list (delete it: two versions of one package stop the install): %s", stray)
    for difference in _tested_versions_differ(WHEELS):
        logger.warning("not the version the tests run with here: %s", difference)
    problems = unmet_requirements(args.dest)
    for problem in problems:
        logger.error("%s", problem)
    tree = working_tree_bytes()
    total = size + tree
    logger.info(
        "%d wheels, %.1f MiB; with the working tree (%.1f MiB) %.1f MiB of the %d MiB that travel",
        len(WHEELS),
        size / 2**20,
        tree / 2**20,
        total / 2**20,
        CARRY_LIMIT_BYTES // 2**20,
    )
    if total > CARRY_LIMIT_BYTES:
        logger.error("over the carry limit by %.1f MiB", (total - CARRY_LIMIT_BYTES) / 2**20)
        return 1
    return 1 if problems or strays else 0


if __name__ == "__main__":
    sys.exit(main())
