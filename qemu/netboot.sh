#!/usr/bin/env bash
# Server mode in QEMU, the whole chain: `bty serve` on this host's loopback with the netboot
# kernel and initrd (make netboot), an image assigned to a VM's blank disk, the VM booted from the
# network (qemu/boot-net.sh: iPXE -> boot.ipxe over TFTP -> GET /ipxe/MAC -> the live system ->
# bty agent), and optionally the flashed disk booted alone afterwards. `make qemu-netboot`.
#
#   qemu/netboot.sh                                # flash images/demo.img.zst onto BTYDISK, console here
#   qemu/netboot.sh --boot-disk                    # ... then boot the flashed disk alone
#   qemu/netboot.sh --action tui --kernel-args 'console=ttyS0,115200 bty-live.session=shell'
#
# Options:
#   --workdir DIR        server state, token, TFTP root, images, disks, logs (default build/qemu/netboot)
#   --netboot DIR        the netboot kernel and initrd (default build/netboot, from `make netboot`)
#   --image FILE         the image to serve and assign (default images/demo.img.zst; its manifest
#                        FILE.toml is written when missing); hard-linked into WORKDIR/images
#   --action A           the plan: flash (default), tui, localboot, wait, or none (assign nothing)
#   --disk SELECTOR      the disk to flash (default serial=BTYDISK)
#   --serials S1,...     serial numbers of the VM's blank disks (default BTYDISK)
#   --mac MAC            the VM's NIC (default 52:54:00:b7:00:01)
#   --kernel-args ARGS   kernel command-line arguments the server adds (default: bty serve's own,
#                        console=tty0 console=ttyS0,115200)
#   --port PORT          the server's port on 127.0.0.1 (default 0: any free port)
#   --boot-disk          once the VM has stopped, boot its first disk alone (qemu/boot-disk.sh)
#   --serial-log FILE, --expect TEXT, --fail-on TEXT, --timeout S, --firmware uefi|bios,
#   --mem MIB, --accel kvm|tcg, --print: as qemu/boot-net.sh (-- ARGS: extra QEMU arguments)
# The server stops when this script ends; its state stays in WORKDIR (bty serve machines --state
# WORKDIR/state), its log in WORKDIR/server.log, the agents' ledger in WORKDIR/images/ledger.jsonl.
# The operator's web UI is on: http://127.0.0.1:PORT/ui/, with the admin token in
# WORKDIR/admin-token (--action none: the machine registers and waits; assign it in the browser).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bty=${BTY:-$root/.venv/bin/bty}

workdir=$root/build/qemu/netboot netboot=$root/build/netboot image=$root/images/demo.img.zst
action=flash disk="" serials=BTYDISK mac=52:54:00:b7:00:01 kernel_args="" kernel_args_set=0 port=0
boot_disk=0 log="" net_args=() extra=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --workdir) workdir=$2; shift 2 ;;
    --netboot) netboot=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --action) action=$2; shift 2 ;;
    --disk) disk=$2; shift 2 ;;
    --serials) serials=$2; shift 2 ;;
    --mac) mac=$2; shift 2 ;;
    --kernel-args) kernel_args=$2; kernel_args_set=1; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --boot-disk) boot_disk=1; shift ;;
    --serial-log) log=$2; net_args+=("$1" "$2"); shift 2 ;;
    --expect|--fail-on|--timeout|--firmware|--mem|--accel) net_args+=("$1" "$2"); shift 2 ;;
    --print) net_args+=("$1"); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "${0##*/}: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
note() { echo "${0##*/}: $*" >&2; }
die() { note "$*"; exit 2; }
case $action in flash|tui|localboot|wait|none) ;; *) die "--action: flash, tui, localboot, wait or none" ;; esac
[[ -x $bty ]] || die "$bty is missing: run 'make setup'"
for f in vmlinuz initrd; do
    [[ -f $netboot/$f ]] || die "no $netboot/$f: run 'make netboot'"
done
[[ $action != flash || -f $image ]] || die "no image $image (make demo-image, or --image FILE)"
disk=${disk:-serial=${serials%%,*}}
mkdir -p "$workdir"
workdir=$(cd "$workdir" && pwd)

# ---- the server ---------------------------------------------------------------------------
rm -rf "$workdir/state" "$workdir/tftp" "$workdir/images"
mkdir -p "$workdir/tftp" "$workdir/images"
if [[ -f $image ]]; then
    [[ -f $image.toml ]] || "$bty" images add "$image" >&2
    for f in "$image" "$image.toml"; do
        ln "$f" "$workdir/images/" 2>/dev/null || cp "$f" "$workdir/images/"
    done
fi
for secret in token admin-token; do
    (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(16))' >"$workdir/$secret")
done
# --poll 3: a machine waiting for a plan asks every 3 s (an operator at the browser is waiting too)
serve=("$bty" serve --images "$workdir/images" --state "$workdir/state" --listen "127.0.0.1:$port"
       --token-file "$workdir/token" --admin-token-file "$workdir/admin-token" --netboot "$netboot" --poll 3)
[[ $kernel_args_set == 1 ]] && serve+=(--kernel-args "$kernel_args")
: >"$workdir/server.log"
"${serve[@]}" >>"$workdir/server.log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 600); do
    url=$(sed -n 's|.*serving \(http://127\.0\.0\.1:[0-9]*\).*|\1|p' "$workdir/server.log" | head -n 1)
    [[ -n $url ]] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$workdir/server.log" >&2; die "bty serve did not start"; }
    sleep 0.1
done
[[ -n $url ]] || die "bty serve did not say where it listens (see $workdir/server.log)"
port=${url##*:}
note "bty serve: $url (pid $server_pid; the VM reaches it as http://10.0.2.2:$port)"
note "operator UI: $url/ui/ (admin token: $workdir/admin-token)"
"$bty" serve ipxe-bootstrap --url "http://10.0.2.2:$port" --token-file "$workdir/token" -o "$workdir/tftp/boot.ipxe"
case $action in
flash) "$bty" serve assign --state "$workdir/state" "$mac" "$(basename "$image")" --disk "$disk" >&2 ;;
none) ;;
*) "$bty" serve assign --state "$workdir/state" "$mac" --action "$action" >&2 ;;
esac

# ---- the VM -------------------------------------------------------------------------------
set +e
"$here/boot-net.sh" --tftp "$workdir/tftp" --mac "$mac" --serials "$serials" --workdir "$workdir" \
    "${net_args[@]}" -- "${extra[@]}"
rc=$?
set -e
note "the VM stopped (exit $rc); what the server knows:"
"$bty" serve machines --state "$workdir/state" >&2 || true
if [[ $boot_disk == 1 ]]; then
    note "booting $workdir/target1.img alone"
    disk_args=()
    [[ -n $log ]] && disk_args=(--serial-log "${log%.log}-disk.log" --expect 'bty-demo: booted' --timeout 600)
    "$here/boot-disk.sh" "$workdir/target1.img" --serial "${serials%%,*}" "${disk_args[@]}"
else
    note "boot the flashed disk alone: qemu/boot-disk.sh $workdir/target1.img --serial ${serials%%,*}"
fi
exit $rc
