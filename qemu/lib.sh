# Shared helpers for the QEMU rig (sourced by boot-stick.sh and boot-disk.sh; not run directly).
# shellcheck shell=bash

QEMU=${QEMU:-qemu-system-x86_64}
BTY_QEMU_MEM=${BTY_QEMU_MEM:-2048}
BTY_QEMU_SMP=${BTY_QEMU_SMP:-2}

die() { echo "${0##*/}: $*" >&2; exit 2; }

# Cleanup on exit: stop a QEMU we started in the background, remove our temporary directory.
QEMU_PID=""
TEMP_DIR=""
cleanup() {
    if [[ -n $QEMU_PID ]]; then kill "$QEMU_PID" 2>/dev/null || true; fi
    if [[ -n $TEMP_DIR ]]; then rm -rf "$TEMP_DIR"; fi
}
trap cleanup EXIT
note() { echo "${0##*/}: $*" >&2; }

# OVMF: the 4M build when present (Debian 12 and 13 both ship it), else the 2M one.
find_ovmf() {
    local dir
    for dir in /usr/share/OVMF /usr/share/ovmf /usr/share/edk2/ovmf /usr/share/qemu; do
        if [[ -r $dir/OVMF_CODE_4M.fd && -r $dir/OVMF_VARS_4M.fd ]]; then
            OVMF_CODE=$dir/OVMF_CODE_4M.fd OVMF_VARS=$dir/OVMF_VARS_4M.fd
            return 0
        fi
        if [[ -r $dir/OVMF_CODE.fd && -r $dir/OVMF_VARS.fd ]]; then
            OVMF_CODE=$dir/OVMF_CODE.fd OVMF_VARS=$dir/OVMF_VARS.fd
            return 0
        fi
    done
    die "no OVMF firmware found (install the ovmf package: make setup)"
}

# Prints "kvm" or "tcg". KVM is used only when it really runs a UEFI guest: /dev/kvm can exist and
# still fail (nested hypervisors: OVMF dies with "KVM internal error"). The probe boots OVMF with
# no disks for a few seconds and looks for the firmware's boot manager on the serial port. The
# answer is cached per host boot. BTY_QEMU_ACCEL=kvm|tcg overrides the probe.
detect_accel() {
    if [[ -n ${BTY_QEMU_ACCEL:-} ]]; then
        echo "$BTY_QEMU_ACCEL"
        return
    fi
    if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
        echo tcg
        return
    fi
    local boot_id cache dir result=tcg
    boot_id=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)
    cache=${XDG_RUNTIME_DIR:-/tmp}/bty-qemu-accel.$(id -u)
    if [[ -r $cache ]] && read -r id answer <"$cache" && [[ $id == "$boot_id" ]]; then
        echo "$answer"
        return
    fi
    find_ovmf
    dir=$(mktemp -d)
    cp "$OVMF_VARS" "$dir/vars.fd"
    timeout 25 "$QEMU" -accel kvm -M q35 -m 256 -nodefaults -display none -no-reboot \
        -drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE" \
        -drive "if=pflash,format=raw,file=$dir/vars.fd" \
        -serial "file:$dir/serial.log" >"$dir/qemu.log" 2>&1 &
    local pid=$! i
    for i in $(seq 1 40); do
        sleep 0.5
        if grep -qaE "BdsDxe|UEFI Interactive Shell|Shell>|PXE|Boot000" "$dir/serial.log" 2>/dev/null; then
            result=kvm
            break
        fi
        if ! kill -0 "$pid" 2>/dev/null || grep -qa "internal error" "$dir/qemu.log"; then
            break
        fi
    done
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    rm -rf "$dir"
    echo "$boot_id $result" >"$cache" 2>/dev/null || true
    echo "$result"
}

# add_accel_args ACCEL: append the -accel/-cpu arguments to QARGS
add_accel_args() {
    if [[ $1 == kvm ]]; then
        QARGS+=(-accel kvm -cpu host)
    else
        # One translation thread per vCPU: faster boots on a multi-core host.
        QARGS+=(-accel tcg,thread=multi -cpu max)
    fi
}

# Secure Boot OVMF: the code that enforces it (needs SMM) and variables with Microsoft's keys
# enrolled, as on a PC from a shop (Debian's ovmf package ships both).
find_ovmf_secboot() {
    local dir
    for dir in /usr/share/OVMF /usr/share/ovmf /usr/share/edk2/ovmf; do
        if [[ -r $dir/OVMF_CODE_4M.secboot.fd && -r $dir/OVMF_VARS_4M.ms.fd ]]; then
            OVMF_CODE=$dir/OVMF_CODE_4M.secboot.fd OVMF_VARS=$dir/OVMF_VARS_4M.ms.fd
            return 0
        fi
    done
    die "no Secure Boot OVMF firmware found (OVMF_CODE_4M.secboot.fd + OVMF_VARS_4M.ms.fd; install ovmf: make setup)"
}

# add_firmware_args WORKDIR [FIRMWARE]: append the firmware's arguments to QARGS.
#   uefi        OVMF code (read-only) + a private copy of its variables (the default)
#   secureboot  OVMF with Secure Boot enforced and Microsoft's keys enrolled; SMM on, the flash
#               writable only from SMM (as the secboot build requires)
#   bios        no pflash at all: QEMU's SeaBIOS, a legacy BIOS PC
# Each firmware keeps its own variables file in WORKDIR, so one workdir can serve all three.
add_firmware_args() {
    local workdir=$1 firmware=${2:-uefi} vars
    case $firmware in
    uefi)
        find_ovmf
        vars=$workdir/OVMF_VARS.fd
        ;;
    secureboot)
        find_ovmf_secboot
        vars=$workdir/OVMF_VARS.secboot.fd
        QARGS+=(-machine smm=on -global driver=cfi.pflash01,property=secure,value=on)
        ;;
    bios)
        return 0
        ;;
    *)
        die "unknown firmware $firmware: uefi, secureboot or bios"
        ;;
    esac
    [[ -f $vars ]] || cp "$OVMF_VARS" "$vars"
    QARGS+=(-drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE"
            -drive "if=pflash,format=raw,file=$vars")
}

# blank_target PATH SIZE KEEP: a blank sparse disk image at PATH; with KEEP=1 an existing one
# is left as it is (--keep-targets: look at what the last run wrote).
blank_target() {
    if [[ $3 == 0 || ! -f $1 ]]; then
        rm -f "$1"
        truncate -s "$2" "$1"
    fi
}

# add_disk_args BUS ID FILE SERIAL [FORMAT] [BLKDEBUG_CONF] [BOOTINDEX]: append one disk to QARGS.
# Controllers (xhci for usb, virtio-scsi for scsi) are added once, on first use.
SATA_PORT=0
HAVE_XHCI=0
HAVE_SCSI=0
add_disk_args() {
    local bus=$1 id=$2 file=$3 serial=$4 format=${5:-raw} blkdebug=${6:-} bootindex=${7:-}
    local drive="if=none,id=$id,format=$format,cache=unsafe,discard=unmap"
    [[ -e $file ]] || die "no such disk image: $file"
    if [[ -n $blkdebug ]]; then
        # blkdebug sits between the format driver and the file; it fails I/O per its rules.
        drive+=",file.driver=blkdebug,file.config=$blkdebug,file.image.filename=$file"
    else
        drive+=",file=$file"
    fi
    QARGS+=(-drive "$drive")
    local extra=""
    [[ -n $bootindex ]] && extra=",bootindex=$bootindex"
    case $bus in
    nvme) QARGS+=(-device "nvme,drive=$id,serial=$serial$extra") ;;
    virtio) QARGS+=(-device "virtio-blk-pci,drive=$id,serial=$serial$extra") ;;
    sata)
        QARGS+=(-device "ide-hd,drive=$id,bus=ide.$SATA_PORT,serial=$serial$extra")
        SATA_PORT=$((SATA_PORT + 1))
        ;;
    scsi)
        if [[ $HAVE_SCSI == 0 ]]; then QARGS+=(-device virtio-scsi-pci,id=scsi0); HAVE_SCSI=1; fi
        QARGS+=(-device "scsi-hd,drive=$id,bus=scsi0.0,serial=$serial$extra")
        ;;
    usb)
        if [[ $HAVE_XHCI == 0 ]]; then QARGS+=(-device qemu-xhci,id=xhci); HAVE_XHCI=1; fi
        QARGS+=(-device "usb-storage,bus=xhci.0,drive=$id,serial=$serial,removable=on$extra")
        ;;
    *) die "unknown bus '$bus' (nvme, virtio, sata, scsi, usb)" ;;
    esac
}

# add_serial_args LOG: the serial console to LOG (a file), or to this terminal when LOG is empty
# (Ctrl-a x quits, Ctrl-a c switches to the QEMU monitor).
add_serial_args() {
    if [[ -n $1 ]]; then
        QARGS+=(-serial "file:$1" -monitor none)
    else
        QARGS+=(-serial mon:stdio)
    fi
}

image_format() {
    case $1 in
    *.qcow2) echo qcow2 ;;
    *) echo raw ;;
    esac
}

# exec_qemu_and_wait TIMEOUT LOG EXPECT [FAIL_ON]: run QEMU with QARGS.
# Without EXPECT or FAIL_ON: in the foreground (stopped after TIMEOUT seconds when TIMEOUT > 0:
# exit 124). Otherwise poll LOG: exit 0 (QEMU stopped) once EXPECT appears, 1 once FAIL_ON appears
# (QEMU stopped) or when QEMU stops without EXPECT (0 when there is no EXPECT), 124 on timeout.
exec_qemu_and_wait() {
    local timeout=$1 log=$2 expect=$3 fail_on=${4:-}
    if [[ -n ${BTY_QEMU_PRINT:-} ]]; then
        printf '%q ' "$QEMU" "${QARGS[@]}"
        echo
    fi
    if [[ -z $expect && -z $fail_on ]]; then
        if [[ $timeout -gt 0 ]]; then
            timeout --foreground "$timeout" "$QEMU" "${QARGS[@]}"
        else
            "$QEMU" "${QARGS[@]}"
        fi
        return
    fi
    : >"$log"
    "$QEMU" "${QARGS[@]}" </dev/null &
    local pid=$! start=$SECONDS
    QEMU_PID=$pid
    stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
    while kill -0 "$pid" 2>/dev/null; do
        if [[ -n $fail_on ]] && grep -qaF -- "$fail_on" "$log"; then
            note "found '$fail_on' after $((SECONDS - start)) s: stopping (log: $log)"
            stop
            return 1
        fi
        if [[ -n $expect ]] && grep -qaF -- "$expect" "$log"; then
            note "found '$expect' after $((SECONDS - start)) s"
            stop
            return 0
        fi
        if [[ $timeout -gt 0 && $((SECONDS - start)) -ge $timeout ]]; then
            note "timed out after $timeout s (log: $log)"
            stop
            return 124
        fi
        sleep 1
    done
    wait "$pid" 2>/dev/null || true
    if [[ -n $fail_on ]] && grep -qaF -- "$fail_on" "$log"; then
        note "found '$fail_on' (QEMU has stopped; log: $log)"
        return 1
    fi
    if [[ -z $expect ]] || grep -qaF -- "$expect" "$log"; then
        note "QEMU stopped after $((SECONDS - start)) s"
        return 0
    fi
    note "QEMU stopped after $((SECONDS - start)) s without '$expect' (log: $log)"
    return 1
}
