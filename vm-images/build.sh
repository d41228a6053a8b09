#!/usr/bin/env bash
# Builds the small bootable VM image the lab's VMs run (`npm run vm-image [-- OUT_DIR]`), from
# Debian packages only: Debian's cloud kernel (virtio and Xen front-end drivers, ext4 built in),
# a static busybox, and a root file system on a qcow2 disk that runs the lab's echo service on
# port 7000. It boots under QEMU TCG in seconds, on a machine without KVM.
#
#   OUT_DIR/vmlinuz       the kernel (direct kernel boot: no boot loader in the image)
#   OUT_DIR/initrd.img    busybox + the driver modules; mounts the disk and switches to it
#   OUT_DIR/root.qcow2    the root file system: busybox, /sbin/init, the service. Machines run on
#                         copy-on-write overlays of it (src/control/disks.ts), never on it.
#   OUT_DIR/image.json    what was built from what (package versions), read by the provisioner
#
# Kernel command line the image understands: tr.ip=ADDR/LEN (required), tr.gw=ADDR,
# tr.port=PORT (default 7000), tr.name=NAME; console=ttyS0 (QEMU/KVM, Xen HVM) or hvc0 (Xen PV).
# The guest prints "tr-ready NAME ADDR PORT" on its console once the service listens.
#
# Idempotent: skips the build when image.json says the same packages and recipe built it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/build}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for tool in apt-get dpkg-deb cpio mkfs.ext4 qemu-img depmod; do
  command -v "$tool" >/dev/null || {
    echo "vm-image: $tool is missing (bash scripts/setup.sh installs it)" >&2
    exit 1
  }
done

# The packages: the newest cloud kernel and busybox-static the configured archive offers.
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
if [ -z "$kernel_pkg" ]; then
  apt-get update -qq
  kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
fi
[ -n "$kernel_pkg" ] || {
  echo "vm-image: no linux-image-cloud-amd64 in the package lists" >&2
  exit 1
}
kernel_ver=$(apt-cache policy "$kernel_pkg" | sed -n 's/^ *Candidate: //p')
busybox_ver=$(apt-cache policy busybox-static | sed -n 's/^ *Candidate: //p')
recipe=$(sha256sum "$0" | cut -c1-16)
want="{\"kernelPackage\":\"$kernel_pkg\",\"kernelVersion\":\"$kernel_ver\",\"busyboxVersion\":\"$busybox_ver\",\"recipe\":\"$recipe\"}"
if [ -f "$out/image.json" ] && [ "$(cat "$out/image.json")" = "$want" ] &&
  [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ] && [ -f "$out/root.qcow2" ]; then
  echo "vm-image: up to date in $out" >&2
  exit 0
fi

echo "vm-image: building from $kernel_pkg $kernel_ver and busybox-static $busybox_ver" >&2
(cd "$work" && apt-get download -q "$kernel_pkg" busybox-static 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
ls "$work"/linux-image-*.deb "$work"/busybox-static_*.deb >/dev/null
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
dpkg-deb -x "$work"/busybox-static_*.deb "$work/busybox"
kver=$(ls "$work/kernel/lib/modules")
depmod -b "$work/kernel" "$kver"

# --- initramfs: load the drivers, mount the root disk, switch to it -----------------------------
init=$work/initramfs
mkdir -p "$init"/{bin,dev,proc,sys,mnt,lib/modules}
cp "$work/busybox/bin/busybox" "$init/bin/busybox"
for a in sh mount umount insmod switch_root sleep cat echo mkdir grep sed ls; do ln -s busybox "$init/bin/$a"; done
# The drivers a QEMU/KVM or Xen guest needs for its disk and network, with their dependencies in
# load order (modules.dep lists each module's dependencies; they load first).
mods="virtio_pci virtio_blk virtio_net xen-blkfront xen-netfront"
modlist=$work/modules.txt
: >"$modlist"
add_module() {
  local path
  path=$(sed -n "s#^\(.*/$1\.ko\(\.xz\)\?\):.*#\1#p" "$work/kernel/lib/modules/$kver/modules.dep" | head -1)
  [ -n "$path" ] || {
    echo "vm-image: module $1 not found in $kver" >&2
    exit 1
  }
  local deps
  deps=$(sed -n "s#^$path: *##p" "$work/kernel/lib/modules/$kver/modules.dep")
  for d in $deps; do
    local dn
    dn=$(basename "$d" .ko)
    grep -qx "$d" "$modlist" || add_module "$dn"
  done
  grep -qx "$path" "$modlist" || echo "$path" >>"$modlist"
}
for m in $mods; do add_module "$m"; done
while read -r path; do
  cp "$work/kernel/lib/modules/$kver/$path" "$init/lib/modules/"
  basename "$path" >>"$init/lib/modules/order"
done <"$modlist"
cat >"$init/init" <<'EOF'
#!/bin/sh
# Stage 1: drivers, then the root disk (virtio: vda, Xen: xvda), then its /sbin/init.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m 2>/dev/null; done
for i in $(seq 1 100); do
  for d in /dev/vda /dev/xvda; do
    if [ -b $d ] && mount -t ext4 $d /mnt; then
      umount /proc /sys
      mount --move /dev /mnt/dev
      exec switch_root /mnt /sbin/init
    fi
  done
  sleep 0.05
done
echo "tr-fatal: no root disk (vda, xvda)"
exec sh
EOF
chmod +x "$init/init"
ln -s busybox "$init/bin/seq"
(cd "$init" && find . | cpio -o -H newc --quiet | gzip -9) >"$work/initrd.img"

# --- root file system: busybox, the init that starts the service --------------------------------
root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc,var/log,root}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
for a in $("$root/bin/busybox" --list); do
  [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
done
cat >"$root/sbin/init" <<'EOF'
#!/bin/sh
# Stage 2 (on the disk): network from the kernel command line, then the echo service, which
# answers every connection on its port with the bytes it receives (the lab's echo protocol).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
ip=""; gw=""; port=7000; name=$(hostname)
for w in $(cat /proc/cmdline); do
  case "$w" in
    tr.ip=*) ip=${w#tr.ip=} ;;
    tr.gw=*) gw=${w#tr.gw=} ;;
    tr.port=*) port=${w#tr.port=} ;;
    tr.name=*) name=${w#tr.name=} ;;
  esac
done
hostname "$name"
ip link set lo up
dev=$(ls /sys/class/net | grep -v '^lo$' | head -1)
if [ -z "$ip" ] || [ -z "$dev" ]; then
  echo "tr-fatal: no tr.ip= on the command line or no network device"
  exec sh
fi
ip addr add "$ip" dev "$dev"
ip link set "$dev" up
[ -n "$gw" ] && ip route add default via "$gw"
# The disk is the machine's state: a fork (a replica made from the running original) starts
# with the boots recorded so far.
echo "$(date -u +%FT%TZ) $name $ip" >>/var/log/boots
sync
nc -ll -p "$port" -e /bin/cat 2>/dev/null &
for i in $(seq 1 200); do
  netstat -ltn 2>/dev/null | grep -q ":$port " && break
  sleep 0.05
done
echo "tr-ready $name ${ip%/*} $port boots=$(wc -l </var/log/boots)"
while :; do sleep 3600; done
EOF
chmod +x "$root/sbin/init"
echo "tcp-replicator lab VM" >"$root/etc/issue"
truncate -s 64M "$work/root.raw"
mkfs.ext4 -q -L tr-root -d "$root" "$work/root.raw"

mkdir -p "$out"
cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz.new"
cp "$work/initrd.img" "$out/initrd.img.new"
qemu-img convert -q -f raw -O qcow2 "$work/root.raw" "$out/root.qcow2.new"
for f in vmlinuz initrd.img root.qcow2; do mv "$out/$f.new" "$out/$f"; done
echo "$want" >"$out/image.json"
echo "vm-image: built in $out ($(du -sh "$out" | cut -f1))" >&2
