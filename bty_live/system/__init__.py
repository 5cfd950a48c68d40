"""Effects on the running system, one adapter per kind: subprocesses (`run`), sysfs and /proc
attributes (`sysfs`), `blkid` probes, the machine's identity (DMI, NICs) and power actions."""
