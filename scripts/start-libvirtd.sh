#!/usr/bin/env bash
# Starts the system virtlogd and libvirtd (as root, daemonized) unless they already run, then
# waits until libvirtd answers on qemu:///system.  Idempotent; used by .ci/run and by the
# libvirt tests' session fixture.  Prints what it did.
#
#   bash scripts/start-libvirtd.sh          # start what is missing
#   bash scripts/start-libvirtd.sh --status # exit 0 when both run and libvirtd answers
set -euo pipefail

URI=qemu:///system
VIRTLOGD_PID=/run/virtlogd.pid
LIBVIRTD_PID=/run/libvirtd.pid
STARTED_MARKER=/run/vmpod-tests-libvirtd.pid

alive() {  # alive PIDFILE NAME: the pid in PIDFILE is a live process called NAME
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

answers() { virsh -q -c "$URI" version >/dev/null 2>&1; }

if [ "${1:-}" = "--status" ]; then
  alive "$VIRTLOGD_PID" virtlogd && answers
  exit
fi

for tool in virtlogd libvirtd virsh; do
  command -v "$tool" >/dev/null || { echo "start-libvirtd: $tool is missing (apt-get install libvirt-daemon-system libvirt-clients)" >&2; exit 1; }
done

if alive "$VIRTLOGD_PID" virtlogd; then
  echo "start-libvirtd: virtlogd already runs (pid $(cat "$VIRTLOGD_PID"))"
else
  virtlogd -d
  echo "start-libvirtd: started virtlogd"
fi

if answers; then
  echo "start-libvirtd: libvirtd already answers on $URI"
  exit 0
fi
started=no
if ! alive "$LIBVIRTD_PID" libvirtd; then
  libvirtd -d
  started=yes
  echo "start-libvirtd: started libvirtd"
fi
for _ in $(seq 1 1200); do
  if answers; then
    # the libvirt tests' fault test kills (and restarts) only a libvirtd that vmpod's tooling started
    [ "$started" = yes ] && cat "$LIBVIRTD_PID" > "$STARTED_MARKER"
    echo "start-libvirtd: libvirtd answers on $URI"
    exit 0
  fi
  sleep 0.1
done
echo "start-libvirtd: libvirtd does not answer on $URI after 120 s" >&2
exit 1
