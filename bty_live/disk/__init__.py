"""Where it may go: the disks this machine has (discovery, hot-plug), what each holds and who uses
it, which one is the boot medium, and the rules that decide whether one may be written
(eligibility, selectors). Every front-end judges disks through `disk.eligibility`."""
