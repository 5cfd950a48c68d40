# bty-live rescue shells
export BTY_RECEIPTS=/run/bty/images/receipts
if [ -t 1 ] && [ -z "${BTY_SESSION:-}" ]; then
    cat <<'MSG'
bty-live rescue shell (root). The bty session runs on tty1 (Alt+F1).
  bty disks            disks, and whether each may be written
  bty images           images on the stick (/run/bty/images)
  bty flash IMAGE DISK write one; bty --help for the rest
  journalctl -b        what happened during this boot
MSG
fi
