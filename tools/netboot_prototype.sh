#!/usr/bin/env bash
# PROTOTYPE of the phase-2 netboot e2e (issue 6), without mkosi: QEMU's iPXE ROM boots from
# user-mode networking (TFTP root + boot file), chains to `bty serve` on this host's loopback
# (10.0.2.2 inside the guest), which hands it a kernel + initrd with bty.server=, bty.token= and
# BOOTIF=; the initrd flashes the NVMe disk from the server and posts a receipt; a second boot
# gets `exit` from the per-MAC script and the firmware boots the flashed disk.
#
# The kernel is Debian's cloud kernel and the initrd a busybox stand-in for the netboot live
# system (wget | zcat | dd, no verification): it proves the chain, not the agent. Phase 2 swaps
# in the mkosi netboot flavour, whose `bty agent` does the real work.
#
#   tools/netboot_prototype.sh [--uefi] [--expect TEXT] [--timeout S] IMAGE.raw
#
# Needs no root. Needs apt-get (downloads two .deb files into build/netboot-proto/debs, installs
# nothing), qemu-system-x86, ipxe-qemu, ovmf (for --uefi), cpio, gzip, openssl, and `make setup`.
# With --expect, boot 2 stops as soon as TEXT is on the serial console (PASS), else at --timeout.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=$repo/.venv/bin/python
work=$repo/build/netboot-proto
uefi=0 expect="" timeout=300 port=18090 mac=52:54:00:b7:00:01
while [[ $# -gt 0 ]]; do
    case $1 in
    --uefi) uefi=1; shift ;;
    --expect) expect=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) image=$1; shift ;;
    esac
done
[[ -n ${image:-} && -r $image ]] || { echo "usage: $0 [--uefi] [--expect TEXT] IMAGE.raw" >&2; exit 2; }
image=$(realpath "$image")
note() { echo "netboot-proto: $*" >&2; }
server_pid=""
trap '[[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null; true' EXIT
rm -rf "$work"/{state,tftp,images,initramfs,target.img,vars.fd,*.log}
mkdir -p "$work"/{debs,tftp,images,netboot}
cd "$work"

# -- kernel and busybox, from the archive (downloaded, not installed) -------------------------
if ! ls debs/linux-image-*.deb >/dev/null 2>&1; then
    kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    (cd debs && apt-get download -q "$kernel_pkg" busybox-static)
fi
rm -rf x && mkdir x && for deb in debs/*.deb; do dpkg-deb -x "$deb" x; done
kver=$(ls x/lib/modules | head -1)
cp x/boot/vmlinuz-"$kver" netboot/vmlinuz

# -- the busybox initrd: load virtio-net, DHCP, talk to the server, flash, report -------------
mkdir -p initramfs/{bin,proc,sys,dev,tmp,lib/modules}
cp x/bin/busybox initramfs/bin/ && ln -s busybox initramfs/bin/sh
mods="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net"
for m in $mods; do find x/lib/modules -name "$m.ko*" -exec cp {} initramfs/lib/modules/ \; ; done
cat > initramfs/udhcpc.sh <<'EOF'
#!/bin/sh
[ "$1" = bound ] && ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" && route add default gw "${router%% *}"
exit 0
EOF
cat > initramfs/init <<EOF
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
say() { echo "bty-proto: \$*" > /dev/console; }
for pass in 1 2 3; do for m in $mods; do insmod /lib/modules/\$m.ko 2>/dev/null; done; done  # any order
for w in \$(cat /proc/cmdline); do
    case \$w in bty.server=*) SERVER=\${w#bty.server=} ;; bty.token=*) TOKEN=\${w#bty.token=} ;; BOOTIF=*) MP=\${w#BOOTIF=01-} ;; esac
done
say "server \$SERVER, boot NIC \$MP"
sleep 1; ip link set eth0 up; udhcpc -i eth0 -q -n -t 10 -s /udhcpc.sh >/dev/null 2>&1 || say "DHCP failed"
AUTH="Authorization: Bearer \$TOKEN"; API="\$SERVER/api/v1/machines/\$MP"
post() { wget -q -O - --header "\$AUTH" --header "Content-Type: application/json" --post-data "\$2" "\$API/\$1" >/dev/null; }
post inventory '{"machine":{"model":"QEMU (busybox prototype)"},"disks":[{"name":"nvme0n1","path":"/dev/nvme0n1"}]}'
PLAN=\$(wget -q -O - --header "\$AUTH" "\$API/plan"); say "plan: \$PLAN"
field() { echo "\$PLAN" | sed -n "s/.*\"\$1\":\"\\([^\"]*\\)\".*/\\1/p"; }
if [ "\$(field action)" = flash ]; then
    RUN=\$(field run_id)
    post events "{\"run_id\":\"\$RUN\",\"events\":[{\"phase\":\"write\",\"kind\":\"start\"}]}"
    wget -q -O - --header "\$AUTH" "\$SERVER\$(field url)" | zcat | dd of=/dev/nvme0n1 bs=1M conv=fsync 2>/dev/null
    post events "{\"run_id\":\"\$RUN\",\"events\":[{\"phase\":\"done\",\"kind\":\"end\"}]}"
    post receipt "{\"run_id\":\"\$RUN\",\"receipt\":{\"result\":\"ok\",\"image_name\":\"\$(field name)\",\"image_blake3\":\"\$(field blake3)\",\"target_path\":\"/dev/nvme0n1\",\"stream_check\":\"not checked (busybox prototype)\"}}"
    say "flashed; receipt posted"
fi
sync; poweroff -f
EOF
chmod +x initramfs/init initramfs/udhcpc.sh
(cd initramfs && find . | cpio -o -H newc --quiet | gzip -1) > netboot/initrd

# -- the server ---------------------------------------------------------------------------------
gzip -1 -c "$image" > images/disk.img.gz
"$py" -m bty_live.cli images add images/disk.img.gz >/dev/null
openssl rand -hex 16 > token && chmod 600 token
(cd "$repo" && exec "$py" -m bty_live.commands.serve --images "$work/images" --state "$work/state" \
    --listen "127.0.0.1:$port" --token-file "$work/token" --netboot "$work/netboot" \
    --kernel-args "console=ttyS0,115200 quiet") 2>server.log &
server_pid=$!
sleep 2
"$py" -m bty_live.commands.serve ipxe-bootstrap --url "http://10.0.2.2:$port" --token-file token -o tftp/boot.ipxe
"$py" -m bty_live.commands.serve assign --state state "$mac" disk.img.gz --disk serial=BTYNET
truncate -s "$(( $(stat -c %s "$image") + (64 << 20) ))" target.img

boot() {  # boot from the network (the NVMe disk is the next boot device) until it stops or $3 shows
    local log=$1 limit=$2 want=${3:-} fw=(-M pc -boot n) pid waited=0
    if [[ $uefi == 1 ]]; then
        [[ -e vars.fd ]] || cp /usr/share/OVMF/OVMF_VARS_4M.fd vars.fd
        fw=(-M q35 -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
            -drive if=pflash,format=raw,file=vars.fd)
    fi
    qemu-system-x86_64 -accel tcg "${fw[@]}" -m 2048 -smp 2 -nodefaults -display none -no-reboot \
        -serial "file:$log" -netdev "user,id=n0,tftp=$work/tftp,bootfile=boot.ipxe" \
        -device "virtio-net-pci,netdev=n0,mac=$mac,bootindex=1" \
        -drive if=none,id=d0,file=target.img,format=raw -device nvme,drive=d0,serial=BTYNET,bootindex=2 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null && (( waited < limit )); do
        if [[ -n $want ]] && grep -aq "$want" "$log" 2>/dev/null; then break; fi
        sleep 1; waited=$((waited + 1))
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

note "boot 1: iPXE -> bty serve -> kernel + initrd -> flash"
boot boot1.log "$timeout"
grep -a "bty-proto\|bty-live" boot1.log >&2 || true
cmp -n "$(stat -c %s "$image")" "$image" target.img && note "the disk holds the image"
"$py" -m bty_live.commands.serve machines --state state >&2
note "boot 2: the per-MAC script exits; the firmware boots the disk"
boot boot2.log "$timeout" "$expect"
grep -a "bty-live" boot2.log >&2 || true
if [[ -n $expect ]]; then
    grep -aq "$expect" boot2.log && note "found '$expect' on the console: PASS" && exit 0
    note "'$expect' did not appear (see $work/boot2.log): FAIL"; exit 1
fi
