#!/usr/bin/env bash
# Build the bty-live stick: build/bty-live.img. Called by `make image [CMDLINE="..."]`.
#
#   1. wheels: bty-live from this tree (build/wheels) and its dependencies for the image's
#      CPython 3.11, pinned to the versions of .venv, the tested set (.cache/wheels)
#   2. mkosi (mkosi.conf): ESP + read-only squashfs root -> build/mkosi/bty-live.raw; skipped when
#      none of its inputs changed since the last build (mkosi itself caches the installed
#      packages in .cache/mkosi: Incremental=yes)
#   3. scripts/stick.py assemble: + the exFAT BTY_IMAGES partition holding images/*, and the boot
#      menu with CMDLINE's keys -> build/bty-live.img
#
# Environment: CMDLINE (kernel command-line keys for both boot entries), BTY_IMAGES_DIR (default
# images), BTY_STICK_OUT (default build/bty-live.img), BTY_MKOSI_FORCE=1 (rebuild mkosi's image).
# Needs root and `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
CMDLINE=${CMDLINE:-}
IMAGES_DIR=${BTY_IMAGES_DIR:-images}
OUT=${BTY_STICK_OUT:-build/bty-live.img}
BASE=build/mkosi/bty-live.raw

say() { echo "build-image: $*" >&2; }
fail() { say "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || fail "run as root (mkosi, loop devices and a FUSE mount need it)"
for tool in mkosi sfdisk mkfs.exfat fsck.exfat mount.exfat-fuse losetup mcopy mmove; do
    command -v "$tool" >/dev/null || fail "$tool is missing: run 'make setup'"
done
[[ -x $VENV/bin/python ]] || fail "$VENV is missing: run 'make setup'"
[[ -e /dev/fuse ]] || fail "/dev/fuse is missing: the exFAT partition is filled through exfat-fuse"

start=$SECONDS
mkdir -p build/wheels .cache/wheels .cache/mkosi build/mkosi

# ---- 1. wheels ---------------------------------------------------------------------------
say "wheels"
rm -f build/wheels/*.whl build/wheels/*.tmp
"$VENV/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
    -w build/wheels . >build/wheels.log 2>&1 || { cat build/wheels.log >&2; fail "building the bty-live wheel failed"; }
rm -rf build/lib build/bdist.linux-x86_64  # setuptools' scratch directories
# The dependencies as tested: .venv's versions, for the image's CPython 3.11 on x86_64.
# pyparted is left out: the image has Debian's python3-parted (no compiler needed in the image).
"$VENV/bin/python" - >build/wheels/requirements.txt <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    if re.match(r"pyparted\b", dep):
        continue
    print(dep)
PY
"$VENV/bin/python" -m pip freeze --disable-pip-version-check --exclude-editable 2>/dev/null \
    | grep -v -i -E '^(pyparted|bty-live)==|^#|^-e ' >build/wheels/constraints.new || true
# Replaced only when it changes: it is one of mkosi's inputs below.
if cmp -s build/wheels/constraints.new build/wheels/constraints.txt; then
    rm build/wheels/constraints.new
else
    mv build/wheels/constraints.new build/wheels/constraints.txt
fi
PIP_FIND_LINKS="" "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check \
    -d .cache/wheels -r build/wheels/requirements.txt -c build/wheels/constraints.txt \
    --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    --platform manylinux_2_36_x86_64 --platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 --platform manylinux_2_5_x86_64 \
    --platform manylinux1_x86_64 --platform any >build/wheels-download.log 2>&1 \
    || { cat build/wheels-download.log >&2; fail "downloading the dependency wheels failed (network?)"; }

# ---- 2. mkosi ----------------------------------------------------------------------------
python3 scripts/apt-sources.py mkosi build/apt-tree bookworm
inputs=(mkosi.conf mkosi.conf.d mkosi.extra mkosi.repart build/apt-tree mkosi.postinst.chroot mkosi.finalize mkosi.initrd
        bty_live pyproject.toml build/wheels/constraints.txt)
stale=1
if [[ -f $BASE && -z ${BTY_MKOSI_FORCE:-} ]]; then
    newer=$(find "${inputs[@]}" -newer "$BASE" -not -name '*.pyc' -not -path '*/__pycache__*' -print -quit 2>/dev/null || true)
    [[ -z $newer ]] && stale=0
fi
if [[ $stale == 1 ]]; then
    say "mkosi (log: build/mkosi.log)"
    t=$SECONDS
    if ! mkosi --force build >build/mkosi.log 2>&1; then
        tail -n 40 build/mkosi.log >&2
        fail "mkosi failed (full log: build/mkosi.log)"
    fi
    touch "$BASE"
    say "mkosi done in $((SECONDS - t)) s: $BASE ($(( $(stat -c %s "$BASE") / 1048576 )) MiB)"
else
    say "mkosi: $BASE is up to date"
fi

# ---- 3. images partition + boot menu -----------------------------------------------------
"$VENV/bin/python" scripts/stick.py assemble "$BASE" "$OUT" --images "$IMAGES_DIR" \
    --cmdline "$CMDLINE" --bty "$VENV/bin/bty"
say "$OUT ready in $((SECONDS - start)) s"
