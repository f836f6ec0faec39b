#!/usr/bin/env bash
# The test command: set-up, then lint, type-check and the whole test suite.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup.sh
bash scripts/start-libvirtd.sh   # libvirtd + virtlogd for the libvirt backend's tests
echo "== ruff"
python3 -m ruff check vmpod plugins tests benchmarks examples
echo "== mypy (strict on vmpod/)"
python3 -m mypy
echo "== mypy (strict on the backend plugins)"
python3 -m mypy --strict plugins/vmpod-qemu/vmpod_qemu plugins/vmpod-libvirt/vmpod_libvirt plugins/vmpod-fake/vmpod_fake
echo "== pytest"
python3 -m pytest "$@"
