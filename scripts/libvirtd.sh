#!/usr/bin/env bash
# Makes sure the system libvirtd (qemu:///system) answers: started by systemd where systemd runs,
# else started here as daemons (virtlogd first: the QEMU driver logs through it). Idempotent;
# exits 0 once `virsh -c qemu:///system version` answers.
set -euo pipefail
# Debian's udev rule gives /dev/kvm to group kvm (0660); machines without udev (containers, CI)
# leave it root-only. libvirtd probes QEMU's capabilities as root (KVM found), then checks KVM as
# the QEMU user (libvirt-qemu, group kvm: not found), declares its capability cache outdated and
# probes again, ~4 s a time and a dozen times per domain definition (47 s measured). The
# standard permissions keep the cache valid; domains of type "qemu" (TCG) still do not use KVM.
if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi
answers() { virsh -c qemu:///system version >/dev/null 2>&1; }
answers && exit 0
command -v libvirtd >/dev/null || {
  echo "libvirtd.sh: libvirtd is not installed (bash scripts/setup.sh installs it)" >&2
  exit 1
}
if [ -d /run/systemd/system ]; then
  systemctl start virtlogd.socket libvirtd.socket libvirtd.service >/dev/null 2>&1 || true
else
  pgrep -x virtlogd >/dev/null || virtlogd -d
  # Under a child subreaper: QEMU processes are orphaned by design (libvirt double-forks them)
  # and libvirt notices a machine's death only once its process is reaped. An init that reaps
  # orphans late (a container's) delayed that by 1.6 s in a measurement here; tini -s reaps at once.
  if ! pgrep -x libvirtd >/dev/null; then
    setsid tini -s -- libvirtd >>/var/log/tcp-replicator-libvirtd.log 2>&1 </dev/null &
  fi
fi
for _ in $(seq 1 100); do
  answers && exit 0
  sleep 0.1
done
echo "libvirtd.sh: libvirtd does not answer on qemu:///system after 10 s" >&2
exit 1
