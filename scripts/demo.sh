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
echo "== state directory: $VMPOD_STATE_DIR"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
# The commands of the README's "A session with the CLI", exactly as written there (shown, then run).
session() { step "$1"; eval "$1"; }

# Work where the README's commands expect to be: next to examples/.
cd "$work"
ln -s "$here/examples" examples

echo "== building (or reusing) the local test guest image"
python3 -m vmpod.guests.tiny
session 'sed "s|IMAGE|file://$(python3 -m vmpod.guests.tiny)|" examples/tiny-vm.yaml > tiny-vm.yaml'

session 'vmpod plugins'
session 'vmpod run --wait-ready tiny-vm.yaml'
session 'vmpod get -o wide'

echo "== waiting for the guest to print its seed (serial console -> pod log)"
for _ in $(seq 1 120); do
  vmpod logs tiny-vm 2>/dev/null | grep -q VMPOD-READY && break
  sleep 1
done
session 'vmpod logs tiny-vm'
vmpod logs tiny-vm | grep -q "VMPOD-SEED instance-id=tiny-vm.default hostname=tiny-vm" \
  || { echo "demo: the guest did not report its seed" >&2; exit 1; }
session 'echo uname -s | vmpod attach tiny-vm --linger 3' | tee "$work/attach.out"
tr -d '\r' <"$work/attach.out" | grep -qx Linux || { echo "demo: the attached shell did not answer" >&2; exit 1; }

echo "== reaching the guest's web server (busybox httpd, port 80) through vmpod port-forward"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
vmpod port-forward tiny-vm "$port:80" & forward=$!
page=""
for _ in $(seq 1 30); do
  page=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/', timeout=5).read().decode())" 2>/dev/null) && break
  sleep 1
done
kill "$forward"; wait "$forward" || true
echo "$page"
grep -q "<h1>tiny-vm</h1>" <<<"$page" || { echo "demo: no page from the guest's web server" >&2; exit 1; }
session 'vmpod describe tiny-vm'

session 'vmpod delete tiny-vm'
session 'vmpod get'
echo "== left in the state directory (only the image cache and the store):"
find "$VMPOD_STATE_DIR" -type f | sed "s|$VMPOD_STATE_DIR/||" | sort
if pgrep -f "$VMPOD_STATE_DIR" >/dev/null; then echo "demo: a process of the pod is still running" >&2; exit 1; fi
trap - EXIT
rm -rf "$work"
echo "demo: OK"
