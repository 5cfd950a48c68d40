#!/usr/bin/env bash
# Boot one disk image alone under UEFI (OVMF), e.g. a target that bty flashed, or the demo OS.
#
#   qemu/boot-disk.sh build/e2e/target1.img                 # serial console on this terminal
#   qemu/boot-disk.sh --serial-log boot.log --expect 'bty-demo: booted' --timeout 300 disk.img
#
# Options:
#   --bus nvme|virtio|sata|scsi|usb   how the disk is attached (default nvme)
#   --serial ID         the disk's serial number (default BTYDISK)
#   --serial-log FILE   serial console (ttyS0) to FILE instead of the terminal
#   --expect TEXT       with --serial-log: stop QEMU and exit 0 once TEXT is in the log;
#                       exit 1 if QEMU stops first (124: the timeout passed)
#   --fail-on TEXT      with --serial-log: stop QEMU and exit 1 once TEXT is in the log
#   --timeout SECONDS   stop QEMU after SECONDS (exit 124 without --expect)
#   --snapshot          do not write to the disk image (changes go to a temporary overlay)
#   --firmware F         uefi (OVMF, the default), secureboot (OVMF, Secure Boot enforced with
#                        Microsoft's keys), or bios (SeaBIOS, legacy BIOS); also BTY_QEMU_FIRMWARE
#   --accel kvm|tcg     override the KVM probe (also BTY_QEMU_ACCEL)
#   --mem MIB           guest memory (default 2048, or BTY_QEMU_MEM)
#   --workdir DIR       where the OVMF variables copy goes (default: a temporary directory)
#   -- ARGS...          extra QEMU arguments
# QEMU exits when the guest powers off; a guest reboot also ends the run (-no-reboot).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=qemu/lib.sh
source "$here/lib.sh"

bus=nvme serial=BTYDISK log="" expect="" fail_on="" timeout=0 snapshot=0 accel="" workdir="" extra=()
firmware=${BTY_QEMU_FIRMWARE:-uefi}
while [[ $# -gt 0 ]]; do
    case $1 in
    --bus) bus=$2; shift 2 ;;
    --serial) serial=$2; shift 2 ;;
    --serial-log) log=$2; shift 2 ;;
    --expect) expect=$2; shift 2 ;;
    --fail-on) fail_on=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --snapshot) snapshot=1; shift ;;
    --accel) accel=$2; shift 2 ;;
    --firmware) firmware=$2; shift 2 ;;
    --mem) BTY_QEMU_MEM=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) disk=$1; shift ;;
    esac
done
[[ -n ${disk:-} ]] || die "which disk? (see --help)"
[[ -z $expect$fail_on || -n $log ]] || die "--expect and --fail-on need --serial-log"

if [[ -z $workdir ]]; then
    workdir=$(mktemp -d -t bty-boot-disk.XXXXXX)
    TEMP_DIR=$workdir
fi
mkdir -p "$workdir"
accel=${accel:-$(detect_accel)}

QARGS=(-M q35 -m "$BTY_QEMU_MEM" -smp "$BTY_QEMU_SMP" -nodefaults -display none -no-reboot
       -name bty-boot-disk)
add_accel_args "$accel"
add_firmware_args "$workdir" "$firmware"
add_disk_args "$bus" disk0 "$disk" "$serial" "$(image_format "$disk")" "" 1
[[ $snapshot == 1 ]] && QARGS+=(-snapshot)
add_serial_args "$log"
QARGS+=("${extra[@]}")

note "booting $disk alone ($bus, serial $serial, $accel)"
exec_qemu_and_wait "$timeout" "$log" "$expect" "$fail_on"
