#!/usr/bin/env bash
# Installs everything vmpod and its tests need on a fresh Debian 12 machine
# (run as root). Idempotent: a second run installs nothing new.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

APT_PACKAGES=(
  qemu-system-x86 qemu-utils            # the hypervisor and qemu-img
  libvirt-daemon-system libvirt-clients # the libvirt backend (libvirtd, virtlogd, virsh, virt-xml-validate)
  libvirt-dev pkg-config gcc            # building libvirt-python
  debootstrap extlinux syslinux-common  # building the cached test guests
  cloud-init                            # `cloud-init schema` checks generated user-data
  cloud-image-utils                     # cloud-localds, the benchmark's reference tool
  genisoimage                           # isoinfo, an independent ISO reader for tests
  openssh-client                        # ssh into test guests
  busybox-static util-linux fdisk e2fsprogs
  containernetworking-plugins iproute2  # the cni network mode: CNI plugins (in /usr/lib/cni), ip netns
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "setup: installing vmpod and its plugins (pip)"
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
  -e "$here[test]" $(for p in "$here"/plugins/*/; do [ -f "$p/pyproject.toml" ] && printf -- '-e %s ' "$p"; done)

# Byte-compile once: with PYTHONDONTWRITEBYTECODE set, Python would otherwise
# recompile every module at every `vmpod` start (it still reads .pyc files).
python3 -m compileall -q "$here/vmpod" "$here"/plugins/*/ >/dev/null || true
