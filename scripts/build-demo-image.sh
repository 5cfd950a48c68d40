#!/usr/bin/env bash
# Build the demo OS (images/demo-os/, mkosi) and pack it twice, from one mkosi build:
#
#   images/demo.img.zst (+ .toml)           ESP + read-only squashfs root: small, quick to flash
#   images/demo-tunable.img.zst (+ .toml)   the same ESP (same UKI) + the same root tree as ext4,
#                                           which post-flash tuning can mount and change; its
#                                           manifest's [tune] names images/demo-tunable.task.yaml
#
# The tunable variant is converted here rather than built by mkosi a second time: the root
# tree is mkosi's squashfs, unpacked (unsquashfs keeps owners, modes and xattrs) and written into
# a new ext4 file system (mkfs.ext4 -d), so both images carry exactly the same system.
# Called by `make demo-image`; needs root (mkosi builds disk images as root here) and `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."

BTY=${BTY:-.venv/bin/bty}
PY=${PY:-.venv/bin/python}
outdir=build/demo-os
out=$outdir/bty-demo.raw
tunable=$outdir/bty-demo-tunable.raw
TASK=demo-tunable.task.yaml
# Free space left in the tunable root beyond its files: tuning, the journal, first-boot jobs.
ROOT_FREE_MIB=${ROOT_FREE_MIB:-64}
ROOT_TYPE=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709  # Discoverable Partitions: root, x86-64
ESP_TYPE=C12A7328-F81F-11D2-BA4B-00A0C93EC93B

say() { echo "build-demo-image: $*"; }
fail() { echo "build-demo-image: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || fail "run as root (mkosi needs it here)"
command -v mkosi >/dev/null || fail "mkosi missing: run 'make setup'"
for tool in unsquashfs mkfs.ext4 sfdisk; do
    command -v "$tool" >/dev/null || fail "$tool missing: run 'make setup'"
done
[[ -x $BTY ]] || fail "$BTY missing: run 'make setup'"
[[ -f images/$TASK ]] || fail "images/$TASK (the tunable demo's tuning task) is missing"

start=$SECONDS
mkdir -p build .cache/mkosi
python3 scripts/apt-sources.py mkosi build/apt-tree bookworm
say "mkosi (log: build/demo-os.log)"
if ! mkosi -C images/demo-os --force build >build/demo-os.log 2>&1; then
    tail -n 30 build/demo-os.log >&2
    fail "mkosi failed (full log: build/demo-os.log)"
fi

# ---- the tunable variant: the same ESP, the root tree as ext4 ------------------------------
# "START SIZE" in 512-byte sectors of the one partition of type $1 in $out
partition() { python3 scripts/stick.py partition "$out" "$1"; }
read -r esp_start esp_size < <(partition "$ESP_TYPE") || fail "no ESP in $out"
read -r root_start root_size < <(partition "$ROOT_TYPE") || fail "no x86-64 root partition in $out"
work=$outdir/tunable
rm -rf "$work" "$tunable"
mkdir -p "$work"
dd if="$out" of="$work/root.squashfs" bs=4M iflag=skip_bytes,count_bytes \
    skip=$((root_start * 512)) count=$((root_size * 512)) status=none
unsquashfs -quiet -no-progress -dest "$work/tree" "$work/root.squashfs" >/dev/null
tree_mib=$(du -s --block-size=1M "$work/tree" | cut -f1)
# Files + a tenth for ext4's metadata and journal + the free space, in whole MiB.
root_mib=$((tree_mib + tree_mib / 10 + 16 + ROOT_FREE_MIB))
# -T default -b 4096: mke2fs would treat a file system this small as "small" (1 KiB blocks).
mkfs.ext4 -q -F -T default -b 4096 -L root -E root_owner=0:0 -d "$work/tree" \
    "$work/root.ext4" "${root_mib}M" >/dev/null || fail "mkfs.ext4 -d failed"
# GPT: the ESP where mkosi put it, the root 1 MiB-aligned after it, 1 MiB for the backup GPT.
esp_end=$(( (esp_start + esp_size) * 512 ))
new_root_start=$(( (esp_end + (1 << 20) - 1) / (1 << 20) * (1 << 20) ))
truncate -s $(( new_root_start + (root_mib << 20) + (1 << 20) )) "$tunable"
sfdisk --quiet --no-reread --no-tell-kernel "$tunable" <<EOF || fail "sfdisk could not write the tunable image's GPT"
label: gpt
first-lba: 2048
start=$esp_start, size=$esp_size, type=$ESP_TYPE, name="esp"
start=$((new_root_start / 512)), size=$((root_mib << 11)), type=$ROOT_TYPE, name="root-x86-64"
EOF
dd if="$out" of="$tunable" bs=4M iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc status=none \
    skip=$((esp_start * 512)) seek=$((esp_start * 512)) count=$((esp_size * 512))
dd if="$work/root.ext4" of="$tunable" bs=4M oflag=seek_bytes conv=notrunc,sparse status=none \
    seek="$new_root_start"
rm -rf "$work"

# ---- pack: 8 MiB independent zstd frames (bty decompresses them on every core) + manifests --
# Packed beside mkosi's output, then moved into images/: a reader never sees half a file.
pack() {  # pack RAW NAME DESCRIPTION
    local packed=$outdir/$2.img.zst
    rm -f "$packed" "$packed.toml"
    "$BTY" images pack "$1" -o "$packed" --name "$2" --description "$3" --os debian-12 --arch x86_64
}
pack "$out" demo "bty demo OS: Debian 12, prints 'bty-demo: booted' on ttyS0, then powers off"
pack "$tunable" demo-tunable \
    "bty demo OS with an ext4 root that tuning can change: hostname, machine-id, a first-boot job"
# The tunable demo's manifest names its tuning task (images/$TASK).
"$PY" - "$outdir/demo-tunable.img.zst" "$TASK" <<'PY'
import sys
from dataclasses import replace
from pathlib import Path

from bty_live.image.manifest import TuneSpec, load_manifest, write_manifest

image = Path(sys.argv[1])
manifest = load_manifest(image)
assert manifest is not None
write_manifest(image, replace(manifest, tune=TuneSpec(task=sys.argv[2])))
PY
for name in demo demo-tunable; do
    mv -f "$outdir/$name.img.zst" "images/$name.img.zst"
    mv -f "$outdir/$name.img.zst.toml" "images/$name.img.zst.toml"
    say "images/$name.img.zst ($(du -h --apparent-size "images/$name.img.zst" | cut -f1)," \
        "$(( $(sed -n 's/^size = //p' "images/$name.img.zst.toml") / 1048576 )) MiB decompressed)"
done
say "done in $((SECONDS - start)) s"
