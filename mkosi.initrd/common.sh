# bty-live initrds (busybox sh), what the stick's /init (mkosi.initrd/init) and the netboot /init
# (mkosi.netboot/init) share; packed as /bty-initrd.sh by mkosi.finalize and
# scripts/build-netboot.sh. Sourcing it installs busybox's applets, mounts the API file systems,
# moves stdio to the console and defines the helpers below.

/bin/busybox --install -s /bin
export PATH=/bin

mkdir -p /proc /sys /dev /run /sysroot /tmp
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
exec </dev/console >/dev/console 2>&1

say() { echo "<5>bty-initrd: $*" >/dev/kmsg 2>/dev/null || echo "bty-initrd: $*"; }
shout() { say "$*"; echo "bty-initrd: $*" >/dev/console; }

rescue() {
    shout "$1"
    shout "rescue shell: fix it, then 'exit' to try again (or reboot -f)"
    setsid cttyhack sh
}

arg() { # arg KEY -> value of KEY= on the kernel command line
    for word in $(cat /proc/cmdline); do
        case $word in "$1"=*) echo "${word#*=}"; return 0 ;; esac
    done
    return 1
}

switch_to_sysroot() { # switch_to_sysroot ARGS: the root mounted on /sysroot takes over (systemd)
    [ "$(arg bty-live.initrd.shell)" = 1 ] && rescue "bty-live.initrd.shell=1: the root is mounted on /sysroot"
    for d in dev proc sys run; do
        mount --move /$d /sysroot/$d 2>/dev/null || mount -o bind /$d /sysroot/$d
    done
    exec switch_root /sysroot /sbin/init "$@"
}
