#!/usr/bin/env bash
# Build the netboot flavour of the live system: build/netboot/vmlinuz + build/netboot/initrd, what
# `bty serve --netboot build/netboot` hands to iPXE. Called by `make netboot`.
#
# No second configuration: this post-processes the stick's mkosi output (mkosi.conf), so the
# netboot system is the stick's system, byte for byte: same packages, same units, same bty.
#   1. scripts/build-image.sh brings build/mkosi/ up to date (wheels, mkosi; skipped when nothing
#      changed). The stick it assembles goes to a scratch file, from no images, and is deleted.
#   2. vmlinuz: mkosi's kernel (build/mkosi/bty-live.vmlinuz), the one GRUB boots from the stick's ESP.
#   3. initrd, two cpio archives one after the other (the kernel unpacks both into its tmpfs):
#        - zstd: /init (mkosi.netboot/init), busybox, the squashfs and loop drivers, taken from
#          the root file system itself
#        - stored: /root.squashfs, the stick's root partition copied out of bty-live.raw
#          (already zstd inside: compressing it again gains nothing and costs boot time)
#      /init mounts /root.squashfs through a loop device as the read-only root and starts systemd.
#
# RAM: the root stays compressed in RAM (the squashfs, ~130 MiB), never unpacked (~490 MiB). While
# the kernel unpacks the initrd both copies are in RAM, so a machine needs about twice the initrd
# plus ~384 MiB (in QEMU, a 129 MiB initrd: 512 MiB of RAM is too little, 640 MiB is enough).
#
# Environment: BTY_NETBOOT_OUT (default build/netboot), BTY_NETBOOT_SKIP_MKOSI=1 (use
# build/mkosi/ as it is, e.g. right after `make image`). Needs root (like `make image`).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${BTY_NETBOOT_OUT:-build/netboot}
MKOSI_OUT=build/mkosi
RAW=$MKOSI_OUT/bty-live.raw
KERNEL=$MKOSI_OUT/bty-live.vmlinuz
ROOT_TYPE=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709  # root-x86-64 (mkosi.repart/10-root.conf)

say() { echo "build-netboot: $*" >&2; }
fail() { say "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || fail "run as root (mkosi needs it)"
for tool in sfdisk unsquashfs cpio zstd; do
    command -v "$tool" >/dev/null || fail "$tool is missing: run 'make setup'"
done
start=$SECONDS

# ---- 1. the stick's mkosi output, up to date ----------------------------------------------
if [[ -z ${BTY_NETBOOT_SKIP_MKOSI:-} ]]; then
    mkdir -p "$OUT"
    scratch=$(mktemp -d -p "$OUT" .stick.XXXXXX)
    trap 'rm -rf "$scratch"' EXIT
    mkdir "$scratch/images"
    say "the live system: scripts/build-image.sh (log: $OUT/build-image.log)"
    if ! BTY_IMAGES_DIR=$scratch/images BTY_STICK_OUT=$scratch/stick.img CMDLINE="" \
            scripts/build-image.sh >"$OUT/build-image.log" 2>&1; then
        tail -n 30 "$OUT/build-image.log" >&2
        fail "scripts/build-image.sh failed (log: $OUT/build-image.log)"
    fi
    rm -rf "$scratch"
    trap - EXIT
fi
[[ -f $RAW && -f $KERNEL ]] || fail "no mkosi output in $MKOSI_OUT (make image)"

# ---- 2., 3. -------------------------------------------------------------------------------
work=$(mktemp -d -t bty-netboot.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT"

read -r start_sector sectors < <(python3 scripts/stick.py partition "$RAW" "$ROOT_TYPE") ||
    fail "no root partition in $RAW"
dd if="$RAW" of="$work/root.squashfs" bs=512 skip="$start_sector" count="$sectors" status=none
# The partition is larger than the file system (alignment): keep exactly the squashfs (its
# superblock's bytes_used at offset 40, padded to 4 KiB as mksquashfs does).
used=$(od -An -tu8 -j 40 -N 8 "$work/root.squashfs" | tr -d ' ')
[[ $(head -c 4 "$work/root.squashfs") == hsqs && $used -gt 0 ]] || fail "the root partition of $RAW is not a squashfs"
truncate -s $(((used + 4095) / 4096 * 4096)) "$work/root.squashfs"

kver=$(unsquashfs -l "$work/root.squashfs" usr/lib/modules 2>/dev/null |
    sed -n 's|^squashfs-root/usr/lib/modules/\([^/]*\)$|\1|p' | head -n 1)
[[ -n $kver ]] || fail "no kernel modules in the root file system"
tree=$work/tree
unsquashfs -q -n -d "$tree" "$work/root.squashfs" usr/bin/busybox \
    "usr/lib/modules/$kver/kernel/fs/squashfs" "usr/lib/modules/$kver/kernel/drivers/block/loop.ko" \
    "usr/lib/modules/$kver/modules.builtin" >/dev/null
[[ -x $tree/usr/bin/busybox ]] || fail "busybox is not in the root file system (busybox-static in mkosi.conf)"
mkdir -p "$tree"/{bin,dev,proc,sys,run,sysroot,tmp,etc}
mv "$tree/usr/bin/busybox" "$tree/bin/busybox"
rmdir "$tree/usr/bin"
ln -s usr/lib "$tree/lib"
install -m 0755 mkosi.netboot/init "$tree/init"
install -m 0644 mkosi.initrd/common.sh "$tree/bty-initrd.sh"

cpio_of() { # cpio_of DIR: a reproducible newc archive of DIR on stdout
    (cd "$1" && find . -print0 | LC_ALL=C sort -z |
        cpio --null --create --format=newc --owner=0:0 --reproducible --quiet)
}
cpio_of "$tree" | zstd -q -19 -T0 >"$work/initrd"
# Zero-pad to 4 bytes: after a compressed archive the kernel skips zeros and takes a plain cpio
# only at a 4-byte aligned offset ("Initramfs unpacking failed: invalid magic" otherwise, and
# /init finds no /root.squashfs). Without this the boot worked for 1 build in 4.
truncate -s %4 "$work/initrd"
mkdir "$work/root"
mv "$work/root.squashfs" "$work/root/root.squashfs"
chmod 0400 "$work/root/root.squashfs"
cpio_of "$work/root" >>"$work/initrd"

cp "$KERNEL" "$OUT/vmlinuz.tmp"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv "$work/initrd" "$OUT/initrd.tmp"
chmod 0644 "$OUT/initrd.tmp"
mv "$OUT/initrd.tmp" "$OUT/initrd"

mib() { echo $((($1 + 1048575) / 1048576)); }
k=$(stat -c %s "$OUT/vmlinuz") i=$(stat -c %s "$OUT/initrd")
say "kernel $kver: $OUT/vmlinuz ($(mib "$k") MiB)"
say "$OUT/initrd ($(mib "$i") MiB: the root file system, $(mib "$used") MiB of squashfs, kept compressed in RAM)"
say "RAM: machines need at least about $(($(mib "$i") * 2 + 384)) MiB (the initrd twice while the kernel unpacks it)"
say "done in $((SECONDS - start)) s; serve it with: bty serve ... --netboot $OUT"
