#!/usr/bin/env bash
# Re-resolves requirements.lock to the newest releases that pyproject.toml's ranges allow (`make lock` runs this,
# then the whole suite on exactly that set in a new .venv/). Run it on purpose (newer dependencies wanted, a security
# fix released, about monthly), never in CI: CI and `make install` only ever install what the lock says.
#
# The lock is resolved for what the project tests on: CPython 3.11 on Linux x86_64 with torch's CPU build. It pins
# every distribution `make install` and the benchmark's extras take (runtime, dev, bench and the packages
# `transformers serve` needs), and the build backend (setuptools, wheel) the editable installs build with.
# torch is written without its local label (`torch==2.13.0`, not `+cpu`), so a CUDA build of the same release
# satisfies it too.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
LOCK=requirements.lock

scratch=$(mktemp -d)
# Installing the tree non-editable leaves setuptools' build/ folders in it: removed with the scratch venv.
trap 'rm -rf "$scratch" build autoglm-proto/build' EXIT
"$PYTHON" -m venv "$scratch/venv"
pip=("$scratch/venv/bin/python" -m pip)
echo "resolving in a scratch venv ($("$PYTHON" --version), $TORCH_SPEC) ..."
"${pip[@]}" install -q "$TORCH_SPEC"
"${pip[@]}" install -q --upgrade "setuptools>=68" wheel
"${pip[@]}" install -q ./autoglm-proto '.[dev,bench]'
"${pip[@]}" check

{
    echo "# The exact set the project tests and ships: every distribution \`make install\`, \`make bench\` and the"
    echo "# images install, for CPython 3.11 on Linux x86_64 (torch: its CPU build; a CUDA build of the same"
    echo "# release satisfies the pin). Used as pip constraints (-c). Regenerate with \`make lock\`, which also runs"
    echo "# the suite on the new set; never edit by hand. Resolved $(date -u +%Y-%m-%d)."
    "${pip[@]}" freeze --all --exclude-editable \
        | grep -v -i -E '^(pip|autoglm-rpc|autoglm-proto)( @|==)' \
        | sed -E 's/^(torch==[^+]+)\+.*$/\1/' \
        | LC_ALL=C sort -f
} > "$LOCK.new"
mv "$LOCK.new" "$LOCK"
echo "wrote $LOCK ($(grep -c '==' "$LOCK") pins); diff against the last commit:"
git --no-pager diff --stat -- "$LOCK" || true
