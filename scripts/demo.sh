#!/usr/bin/env bash
# The main job: on a fresh Debian 12 machine (as root) install vmpod, build (or
# reuse) the small local test guest, boot it as a VM pod on the default
# backend (qemu, no daemon needed), show it Running with its console log
# proving the guest read its cloud-init seed, then delete it and show that
# nothing is left behind.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"

work=$(mktemp -d /tmp/vmpod-demo.XXXXXX)
export VMPOD_STATE_DIR="$work/state"
trap 'vmpod delete tiny-vm >/dev/null 2>&1 || true' EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

echo "== building (or reusing) the local test guest image"
image=$(python3 -m vmpod.guests.tiny)
sed "s|IMAGE|file://$image|" "$here/examples/tiny-vm.yaml" > "$work/tiny-vm.yaml"

step vmpod plugins
vmpod plugins
step vmpod run --wait "$work/tiny-vm.yaml"
vmpod run --wait "$work/tiny-vm.yaml"
step vmpod get -o wide
vmpod get -o wide

echo "== waiting for the guest to print its seed (serial console -> pod log)"
for _ in $(seq 1 120); do
  vmpod logs tiny-vm 2>/dev/null | grep -q VMPOD-READY && break
  sleep 1
done
step vmpod logs tiny-vm
vmpod logs tiny-vm
vmpod logs tiny-vm | grep -q "VMPOD-SEED instance-id=tiny-vm.default hostname=tiny-vm" \
  || { echo "demo: the guest did not report its seed" >&2; exit 1; }
step vmpod describe tiny-vm
vmpod describe tiny-vm

step vmpod delete tiny-vm
vmpod delete tiny-vm
step vmpod get
vmpod get
echo "== left in the state directory (only the image cache and the store):"
find "$VMPOD_STATE_DIR" -type f | sed "s|$VMPOD_STATE_DIR/||" | sort
if pgrep -f "$VMPOD_STATE_DIR" >/dev/null; then echo "demo: a process of the pod is still running" >&2; exit 1; fi
trap - EXIT
rm -rf "$work"
echo "demo: OK"
