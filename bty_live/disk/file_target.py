"""Regular files as target disks: a test-only switch, so round trips run without root or loops.

With BTY_TEST_FILE_TARGETS=1 in the environment, `bty flash IMAGE FILE` (and every front-end)
accepts an existing regular file where a disk is expected: it is described as a disk of
transport "file" whose one backing file is itself, so the eligibility rules still refuse the
image, a file of the images directory, or anything else they protect. The engine then writes it
with the same pipeline, O_DIRECT included (the file system must support it: ext4 and xfs do,
tmpfs does not). There are no kernel partitions to re-read and no device to zero by itself.

Never set on the live stick or by any front-end: without the switch a regular file is refused
as "not a block device", as it always was.
"""

from __future__ import annotations

import os
import stat

from bty_live.disk.model import BackingFile, Disk, DiskIdentity
from bty_live.system.blkid import probe_nodes

FILE_TARGETS_ENV = "BTY_TEST_FILE_TARGETS"
#: what a file target reports as its logical sector size
FILE_SECTOR = 512


def file_targets_allowed() -> bool:
    return os.environ.get(FILE_TARGETS_ENV) == "1"


def is_file_target(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a regular file to be treated as a disk (the switch is on)."""
    if not file_targets_allowed():
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def file_identity(path: str | os.PathLike[str]) -> DiskIdentity:
    """A file's identity: its inode stands for the kernel's diskseq (a replaced file differs)."""
    real = os.path.realpath(path)
    return _identity(real, os.stat(real))


def _identity(real: str, st: os.stat_result) -> DiskIdentity:
    return DiskIdentity(path=real, devnum=(0, 0), size=st.st_size, serial=None, wwn=None, model=None,
                        loop_backing_file=real, diskseq=st.st_ino)


def file_disk(path: str | os.PathLike[str]) -> Disk:
    """A regular file described as a disk (contents probed with blkid, as for a real one)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    identity = _identity(real, st)
    probe = probe_nodes([identity.path])
    own = probe.values.get(identity.path, {})
    return Disk(
        name=os.path.basename(identity.path),
        path=identity.path,
        devnum=identity.devnum,
        size=identity.size,
        transport="file",
        logical_sector_size=FILE_SECTOR,
        physical_sector_size=FILE_SECTOR,
        loop_backing_file=identity.path,
        pttype=own.get("PTTYPE"),
        fstype=own.get("TYPE"),
        label=own.get("LABEL"),
        uuid=own.get("UUID"),
        diskseq=identity.diskseq,
        backing_chain=(BackingFile(loop=os.path.basename(identity.path), path=identity.path,
                                   inode=(st.st_dev, st.st_ino)),),
        probe_error=probe.error_text(),
    )
