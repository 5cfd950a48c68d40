#!/usr/bin/env bash
# Boot the bty-live stick under UEFI (OVMF) as a USB stick (qemu-xhci + usb-storage), with N
# blank target disks, the serial console on this terminal or in a log file.
#
#   qemu/boot-stick.sh                                   # build/bty-live.img, 2 NVMe targets
#   qemu/boot-stick.sh --targets 3 --bus sata --target-size 8G
#   qemu/boot-stick.sh --cmdline 'bty.image=demo bty.disk=serial=TARGET1 bty.after=poweroff' \
#       --serial-log build/qemu/serial.log --expect 'reboot: Power down' --timeout 900
#   qemu/boot-disk.sh build/qemu/target1.img             # then boot a flashed target alone
#
# The stick is booted from a copy (WORKDIR/stick.img) unless --in-place: tests get a fresh stick
# and the receipts a run writes stay in that copy. Targets are sparse files
# WORKDIR/target1.img... with serial numbers TARGET1, TARGET2, ... (--serial-prefix).
#
# Options:
#   --stick IMAGE        the stick image (default build/bty-live.img)
#   --workdir DIR        where the copies, targets, OVMF variables and logs go (default build/qemu)
#   --targets N          number of target disks (default 2; 0 for none)
#   --bus BUS            nvme, virtio, sata or scsi (default nvme)
#   --target-size SIZE   size of new target disks (default 4G)
#   --serial-prefix P    target serial numbers P1, P2, ... (default TARGET)
#   --keep-targets       reuse WORKDIR/targetN.img if present (default: recreate them blank)
#   --fail-writes K[@OFFSET]  target K fails (EIO) every write or write-zeroes request that
#                        touches byte OFFSET (default 72M: data, in
#                        the demo image's root partition), through QEMU's blkdebug driver
#   --cmdline KEYS       kernel command-line keys for this boot, after the stick's own (and
#                        after those a `make image CMDLINE=...` added, unless --no-build-keys)
#   --no-build-keys      leave out the keys the stick was built with
#   --console serial|screen   the default boot entry (default serial: console=ttyS0 is last)
#   --stick-size SIZE    grow the stick copy to SIZE first (a larger USB stick)
#   --menu-timeout N     show GRUB's boot menu for N seconds (default 0: hidden; a key sent over
#                        the serial line starting with Esc reaches GRUB too late to show it)
#   --in-place           boot IMAGE itself, not a copy (it is written to)
#   --serial-log FILE    serial console to FILE instead of the terminal
#   --expect TEXT        with --serial-log: stop QEMU and exit 0 once TEXT is in the log
#   --fail-on TEXT       with --serial-log: stop QEMU and exit 1 once TEXT is in the log
#   --timeout SECONDS    stop QEMU after SECONDS (124)
#   --firmware F         uefi (OVMF, the default), secureboot (OVMF, Secure Boot enforced with
#                        Microsoft's keys), or bios (SeaBIOS, legacy BIOS); also BTY_QEMU_FIRMWARE
#   --accel kvm|tcg      override the KVM probe (also BTY_QEMU_ACCEL)
#   --mem MIB            guest memory (default 2048, or BTY_QEMU_MEM)
#   --print              print the QEMU command line before running it
#   -- ARGS...           extra QEMU arguments
# QEMU exits when the guest powers off; a guest reboot also ends the run (-no-reboot), so a
# reboot loop shows as an early exit, never as a loop.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=qemu/lib.sh
source "$here/lib.sh"

stick=$root/build/bty-live.img workdir=$root/build/qemu targets=2 bus=nvme target_size=4G
prefix=TARGET keep_targets=0 fail="" cmdline="" console=serial stick_size="" in_place=0 build_keys="" menu_timeout=0
log="" expect="" fail_on="" timeout=0 accel="" extra=() firmware=${BTY_QEMU_FIRMWARE:-uefi}
while [[ $# -gt 0 ]]; do
    case $1 in
    --stick) stick=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --bus) bus=$2; shift 2 ;;
    --target-size) target_size=$2; shift 2 ;;
    --serial-prefix) prefix=$2; shift 2 ;;
    --keep-targets) keep_targets=1; shift ;;
    --fail-writes) fail=$2; shift 2 ;;
    --cmdline) cmdline=$2; shift 2 ;;
    --no-build-keys) build_keys=--no-build-keys; shift ;;
    --console) console=$2; shift 2 ;;
    --stick-size) stick_size=$2; shift 2 ;;
    --menu-timeout) menu_timeout=$2; shift 2 ;;
    --in-place) in_place=1; shift ;;
    --serial-log) log=$2; shift 2 ;;
    --expect) expect=$2; shift 2 ;;
    --fail-on) fail_on=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --accel) accel=$2; shift 2 ;;
    --firmware) firmware=$2; shift 2 ;;
    --mem) BTY_QEMU_MEM=$2; shift 2 ;;
    --print) BTY_QEMU_PRINT=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ -f $stick ]] || die "no stick image at $stick (make image)"
[[ -z $expect$fail_on || -n $log ]] || die "--expect and --fail-on need --serial-log"
case $bus in nvme|virtio|sata|scsi) ;; *) die "--bus: nvme, virtio, sata or scsi" ;; esac
case $console in serial|screen) ;; *) die "--console: serial or screen" ;; esac
mkdir -p "$workdir"
accel=${accel:-$(detect_accel)}

# The stick: a sparse copy, adjusted (boot menu keys, size) without touching the original.
if [[ $in_place == 1 ]]; then
    disk=$stick
else
    disk=$workdir/stick.img
    cp --sparse=always "$stick" "$disk"
fi
if [[ -n $stick_size ]]; then
    truncate -s "$stick_size" "$disk"
fi
python3 "$root/scripts/stick.py" cmdline "$disk" --append "$cmdline" --default "$console" --timeout "$menu_timeout" $build_keys \
    2>"$workdir/stick-menu.log" || die "could not write the boot menu of $disk: $(cat "$workdir/stick-menu.log")"

QARGS=(-M q35 -m "$BTY_QEMU_MEM" -smp "$BTY_QEMU_SMP" -nodefaults -display none -no-reboot
       -name bty-stick)
add_accel_args "$accel"
add_firmware_args "$workdir" "$firmware"
add_disk_args usb stick "$disk" BTYSTICK raw "" 1

fail_k="" fail_offset=$((72 << 20))
if [[ -n $fail ]]; then
    fail_k=${fail%%@*}
    if [[ $fail == *@* ]]; then
        fail_offset=$(numfmt --from=iec "${fail#*@}")
    fi
fi
for ((i = 1; i <= targets; i++)); do
    t=$workdir/target$i.img
    blank_target "$t" "$target_size" "$keep_targets"
    conf=""
    if [[ $i == "$fail_k" ]]; then
        # Every write (and write-zeroes) request touching that sector fails with EIO.
        conf=$workdir/blkdebug-target$i.conf
        : >"$conf"
        for rule in pwritev:write pwritev_zero:write-zeroes; do
            printf '[inject-error]\nevent = "%s"\niotype = "%s"\nerrno = "5"\nsector = "%d"\n\n' \
                "${rule%%:*}" "${rule#*:}" $((fail_offset / 512)) >>"$conf"
        done
        note "target $i ($prefix$i): writes touching byte $fail_offset fail with EIO (blkdebug)"
    fi
    add_disk_args "$bus" "target$i" "$t" "$prefix$i" raw "$conf"
done
QARGS+=(-nic none)
add_serial_args "$log"
QARGS+=("${extra[@]}")

note "booting $disk as a USB stick ($accel), $targets $bus target(s) in $workdir"
exec_qemu_and_wait "$timeout" "$log" "$expect" "$fail_on"
