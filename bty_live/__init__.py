"""bty-live: stream disk images onto disks, verified end to end."""

__version__ = "0.1.0"
