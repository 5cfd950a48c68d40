"""`bty capture`: a disk read into a packed image (multi-frame zstd) with its manifest.

The reverse of a flash, split the same way: `prepare.py` gathers what a plan needs (the disk,
its head and partition table, the output's free space), `plan.py` decides (pure: the length to
read, the GPT patches of --trim, the space rule, the manifest), `engine.py` runs the plan
(O_EXCL, the disk checked again, `copy.py`'s stages, the atomic rename, the receipt).
"""
