#!/usr/bin/env bash
# Installs everything tcp-replicator needs on a fresh Debian 12 machine (run as root), idempotently:
# Debian packages only when one is missing, `npm ci` only when package-lock.json changed since the
# last install, then the TypeScript build. Both README commands start with this script.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2 nftables conntrack ethtool procps psmisc iputils-ping curl ca-certificates
  libpcap-dev tcpdump build-essential python3
  redis-server redis-tools apache2
  haproxy wrk jq chromium
  libvirt-dev libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils
  libxml2-utils kmod cpio tini
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (the lab creates network namespaces and nftables tables)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps apt from starting the system redis/apache services: the lab runs its own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.tcp-replicator
  chmod +x /usr/sbin/policy-rc.d.tcp-replicator
  had_policy=0
  [ -e /usr/sbin/policy-rc.d ] && had_policy=1
  [ $had_policy -eq 0 ] && cp /usr/sbin/policy-rc.d.tcp-replicator /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  [ $had_policy -eq 0 ] && rm -f /usr/sbin/policy-rc.d
  rm -f /usr/sbin/policy-rc.d.tcp-replicator
fi

stamp=node_modules/.tcp-replicator-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund >&2
  echo "$want" > "$stamp"
fi

npm run --silent build >&2

# The VM backends: libvirtd answering on qemu:///system, and the VM image (kernel, initramfs and
# root disk from Debian packages; skipped when up to date).
bash scripts/libvirtd.sh >&2
bash vm-images/build.sh vm-images/build >&2
