#!/usr/bin/env bash
# Build the demo OS (images/demo-os/, mkosi) and pack it as images/demo.img.zst + manifest.
# Called by `make demo-image`; needs root (mkosi builds disk images as root here) and `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."

BTY=${BTY:-.venv/bin/bty}
out=build/demo-os/bty-demo.raw

[[ $(id -u) -eq 0 ]] || { echo "build-demo-image: run as root (mkosi needs it here)" >&2; exit 1; }
command -v mkosi >/dev/null || { echo "build-demo-image: mkosi missing: run 'make setup'" >&2; exit 1; }
[[ -x $BTY ]] || { echo "build-demo-image: $BTY missing: run 'make setup'" >&2; exit 1; }

start=$SECONDS
mkdir -p build .cache/mkosi
python3 scripts/apt-sources.py mkosi build/apt-tree bookworm
echo "build-demo-image: mkosi (log: build/demo-os.log)"
if ! mkosi -C images/demo-os --force build >build/demo-os.log 2>&1; then
    tail -n 30 build/demo-os.log >&2
    echo "build-demo-image: mkosi failed (full log: build/demo-os.log)" >&2
    exit 1
fi
# 8 MiB independent zstd frames: bty decompresses them on every core. pack writes the manifest.
rm -f images/demo.img.zst images/demo.img.zst.toml
"$BTY" images pack "$out" -o images/demo.img.zst --name demo \
    --description "bty demo OS: Debian 12, prints 'bty-demo: booted' on ttyS0, then powers off" \
    --os debian-12 --arch x86_64
echo "build-demo-image: images/demo.img.zst ($(du -h --apparent-size images/demo.img.zst | cut -f1)," \
     "$(( $(stat -c %s "$out") / 1048576 )) MiB decompressed) in $((SECONDS - start)) s"
