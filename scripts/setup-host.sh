#!/usr/bin/env bash
# Install the host packages bty-live needs, on Debian 12 (bookworm) or Debian 13 (trixie).
# Idempotent: re-running it installs nothing new. Called by `make setup`.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    SUDO=sudo
else
    SUDO=
fi

debian_major=$(cut -d. -f1 /etc/debian_version 2>/dev/null || echo unknown)
export DEBIAN_FRONTEND=noninteractive

# Tools the engine, tests and benchmark call: image building, partitioning,
# compression, peers (dd, zstd, bmaptool), and the headers pyparted builds against.
common=(
    python3 python3-venv python3-dev build-essential pkg-config
    util-linux fdisk gdisk parted e2fsprogs dosfstools mtools exfatprogs exfat-fuse
    zstd xz-utils gzip bzip2 lz4 zip bmap-tools coreutils procps psmisc time xfsprogs btrfs-progs
    # the reflash benchmark's peer (casync extract seeded with the target disk), and strace,
    # with which the benchmark counts the chunk files casync reads from its store
    casync strace
    # virtual disks: qemu-img/qemu-nbd (qemu-utils, below) serve them, nbdcopy streams them into bty
    libnbd-bin
    # the reference OCI registry (distribution 2.8) the `bty flash oci://` tests start themselves;
    # its service is disabled below: a test runs `docker-registry serve` with its own config
    docker-registry
)
# The live stick and the QEMU rig.
live=(
    kmod cpio qemu-system-x86 qemu-utils ovmf debian-archive-keyring
    systemd-container dpkg-dev apt
    python3-pefile squashfs-tools bubblewrap
    # mkosi runs the host's grub-mkimage and grub-bios-setup for the stick's legacy BIOS boot
    grub-pc-bin grub-common
    # the e2e screen test reads the TUI off QEMU's framebuffer (OCR)
    tesseract-ocr tesseract-ocr-eng
    # the operator's web UI is tested in a real headless browser (selenium from PyPI)
    chromium chromium-driver
)

stamp=/var/lib/bty-live-setup.stamp
want="$debian_major ${common[*]} ${live[*]}"
if [[ -f $stamp && $(cat "$stamp") == "$want" ]] && command -v mkosi >/dev/null; then
    echo "setup-host: host packages already installed (Debian $debian_major)"
    exit 0
fi

case "$debian_major" in
12)
    # mkosi 24 and systemd 254 (with ukify and systemd-boot) only exist in bookworm-backports.
    # libudev-dev must then come from backports as well, or libparted-dev cannot be installed.
    # From the same mirror the host already uses for bookworm (the project names none).
    src=/etc/apt/sources.list.d/bookworm-backports.sources
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        mirror=$(python3 "$(dirname "$0")/apt-sources.py" mirror bookworm)
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
            "$mirror" /usr/share/keyrings/debian-archive-keyring.gpg | $SUDO tee "$src" >/dev/null
    fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${common[@]}" "${live[@]}"
    $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports \
        mkosi systemd systemd-boot systemd-boot-efi udev libudev-dev libparted-dev
    ;;
13)
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${common[@]}" "${live[@]}" \
        mkosi systemd-boot systemd-boot-efi systemd-repart systemd-ukify udev libudev-dev libparted-dev
    ;;
*)
    echo "setup-host: unsupported system (/etc/debian_version: $debian_major); need Debian 12 or 13" >&2
    exit 1
    ;;
esac

# the package enables a registry service on :5000; the tests start their own on a free port
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    $SUDO systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
fi

echo "$want" | $SUDO tee "$stamp" >/dev/null
echo "setup-host: done (Debian $debian_major)"
