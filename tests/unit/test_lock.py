"""requirements.lock is what the project tests and ships: it pins every distribution the project asks for, each
pin inside pyproject.toml's range, and this environment (built by `make install` from the lock) is exactly it.
A hand-edited pyproject.toml that the lock no longer satisfies fails here, with `make lock` as the fix."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
# The project's own distributions (installed editable from the tree) and the installer itself are not pinned.
UNPINNED = {"autoglm-rpc", "autoglm-proto", "pip"}


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip()).groups()  # type: ignore[union-attr]
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _declared() -> list[Requirement]:
    """Every requirement of the project and of its stubs' distribution, extras included."""
    requirements = []
    for path in (ROOT / "pyproject.toml", ROOT / "autoglm-proto" / "pyproject.toml"):
        project = tomllib.loads(path.read_text())["project"]
        requirements += project["dependencies"]
        for extra in project.get("optional-dependencies", {}).values():
            requirements += extra
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    return [Requirement(r) for r in requirements + build]


def test_every_declared_requirement_is_pinned_inside_its_range() -> None:
    pins = _lock()
    outside = []
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        if name in UNPINNED:
            continue
        assert name in pins, f"{requirement} is not in requirements.lock: run `make lock`"
        if not requirement.specifier.contains(pins[name], prereleases=True):
            outside.append(f"{requirement} (locked {pins[name]})")
    assert not outside, f"locked outside pyproject.toml's ranges, run `make lock`: {outside}"


def test_the_lock_is_closed_under_its_packages_requirements() -> None:
    """Nothing the locked packages need (on this platform) is left to the resolver at install time. Read from the
    installed ones' metadata: the bench extra (matplotlib and its own) is locked but installed by `make bench`."""
    pins = _lock()
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    missing = set()
    for name in pins.keys() & installed.keys():
        for spec in installed[name].requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                dependency = canonicalize_name(requirement.name)
                if dependency not in pins and dependency not in UNPINNED:
                    missing.add(f"{name} -> {requirement}")
    assert not missing, sorted(missing)


def test_this_environment_is_the_lock() -> None:
    """`make install` took exactly the locked versions (torch's local build label aside: a CUDA build of the
    locked release is the same pin) and nothing the lock does not name."""
    pins = _lock()
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()}
    differ = {
        name: f"{version} installed, {pins[name]} locked"
        for name, version in installed.items()
        if name in pins and Version(version.public) != pins[name]
    }
    assert not differ, f"the environment is not the lock (rebuild it: rm -rf .venv && make install): {differ}"
    extra = sorted(name for name in installed if name not in pins and name not in UNPINNED)
    assert not extra, f"installed but not locked: {extra}"
