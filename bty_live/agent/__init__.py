"""`bty agent`: the netbooted flasher of server mode.

Started at boot when `bty.server=` is on the kernel command line, it tells `bty serve` who the
machine is, asks for its plan, streams the image over HTTP(S) straight into the engine (resuming
dropped downloads), streams the engine's events back, posts the receipt and reboots.

    runner.py     the state machine            api.py      the JSON API client (http.client)
    uplink.py     events -> server, in the background, never blocking the flash
    inventory.py  DMI, NICs, disks             tuning.py   SEAM(tuning): post-flash tuning
The image stream itself is bty_live.image.http_source.HttpSource.
"""
