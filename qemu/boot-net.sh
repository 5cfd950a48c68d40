#!/usr/bin/env bash
# Boot a VM from the network: QEMU's iPXE ROM on a virtio NIC, QEMU's user-mode network (DHCP +
# TFTP, the host is 10.0.2.2), blank target disks next in the boot order. What a machine in a
# rack does when `bty serve` runs it; qemu/netboot.sh sets the server up around this.
#
#   qemu/boot-net.sh --tftp DIR                          # DIR/boot.ipxe, one blank NVMe target
#   qemu/boot-net.sh --tftp DIR --serials BTYDISK --serial-log boot.log --fail-on 'FAILED' --timeout 900
#
# Options:
#   --tftp DIR           TFTP root QEMU serves (required); DHCP names --bootfile in it
#   --bootfile NAME      the boot file DHCP hands out (default boot.ipxe: an iPXE script)
#   --mac MAC            the NIC's MAC address (default 52:54:00:b7:00:01)
#   --firmware uefi|bios UEFI (OVMF, default) or legacy BIOS (SeaBIOS), each with its iPXE ROM
#   --workdir DIR        target disks, OVMF variables (default build/qemu/netboot)
#   --targets N          number of blank target disks WORKDIR/targetN.img (default 1)
#   --serials S1,S2...   their serial numbers (default TARGET1, TARGET2, ...; sets --targets)
#   --bus BUS            nvme, virtio, sata or scsi (default nvme)
#   --target-size SIZE   size of new target disks (default 4G)
#   --keep-targets       reuse WORKDIR/targetN.img if present (default: recreate them blank)
#   --serial-log FILE    serial console to FILE instead of the terminal
#   --expect TEXT        with --serial-log: stop QEMU and exit 0 once TEXT is in the log
#   --fail-on TEXT       with --serial-log: stop QEMU and exit 1 once TEXT is in the log
#   --timeout SECONDS    stop QEMU after SECONDS (124)
#   --accel kvm|tcg      override the KVM probe (also BTY_QEMU_ACCEL)
#   --mem MIB            guest memory (default 2048, or BTY_QEMU_MEM)
#   --print              print the QEMU command line before running it
#   -- ARGS...           extra QEMU arguments
# A guest reboot ends the run (-no-reboot), like a power-off: the agent reboots when it is done.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=qemu/lib.sh
source "$here/lib.sh"

tftp="" bootfile=boot.ipxe mac=52:54:00:b7:00:01 firmware=uefi workdir=$root/build/qemu/netboot
targets=1 serials="" bus=nvme target_size=4G keep_targets=0
log="" expect="" fail_on="" timeout=0 accel="" extra=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --tftp) tftp=$2; shift 2 ;;
    --bootfile) bootfile=$2; shift 2 ;;
    --mac) mac=$2; shift 2 ;;
    --firmware) firmware=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --serials) serials=$2; shift 2 ;;
    --bus) bus=$2; shift 2 ;;
    --target-size) target_size=$2; shift 2 ;;
    --keep-targets) keep_targets=1; shift ;;
    --serial-log) log=$2; shift 2 ;;
    --expect) expect=$2; shift 2 ;;
    --fail-on) fail_on=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --accel) accel=$2; shift 2 ;;
    --mem) BTY_QEMU_MEM=$2; shift 2 ;;
    --print) BTY_QEMU_PRINT=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ -n $tftp && -d $tftp ]] || die "--tftp DIR: the TFTP root (with $bootfile) is required"
[[ -f $tftp/$bootfile ]] || note "warning: $tftp/$bootfile does not exist (yet)"
[[ -z $expect$fail_on || -n $log ]] || die "--expect and --fail-on need --serial-log"
case $bus in nvme|virtio|sata|scsi) ;; *) die "--bus: nvme, virtio, sata or scsi" ;; esac
case $firmware in uefi|bios) ;; *) die "--firmware: uefi or bios" ;; esac
tftp=$(cd "$tftp" && pwd)
mkdir -p "$workdir"
accel=${accel:-$(detect_accel)}
serial_list=()
if [[ -n $serials ]]; then
    IFS=, read -ra serial_list <<<"$serials"
    targets=${#serial_list[@]}
else
    for ((i = 1; i <= targets; i++)); do serial_list+=("TARGET$i"); done
fi

QARGS=(-M q35 -m "$BTY_QEMU_MEM" -smp "$BTY_QEMU_SMP" -nodefaults -display none -no-reboot
       -name bty-netboot)
add_accel_args "$accel"
[[ $firmware == uefi ]] && add_firmware_args "$workdir"
# The NIC first in the boot order; its option ROM (ipxe-qemu: efi-virtio.rom or pxe-virtio.rom)
# is iPXE, which runs DHCP, fetches the boot file over TFTP and runs the script.
QARGS+=(-netdev "user,id=net0,tftp=$tftp,bootfile=$bootfile"
        -device "virtio-net-pci,netdev=net0,mac=$mac,bootindex=1")
for ((i = 1; i <= targets; i++)); do
    t=$workdir/target$i.img
    blank_target "$t" "$target_size" "$keep_targets"
    add_disk_args "$bus" "target$i" "$t" "${serial_list[$((i - 1))]}" raw "" $((i + 1))
done
add_serial_args "$log"
QARGS+=("${extra[@]}")

note "booting from the network ($firmware, $accel, MAC $mac, TFTP $tftp/$bootfile), $targets $bus target(s) in $workdir"
exec_qemu_and_wait "$timeout" "$log" "$expect" "$fail_on"
