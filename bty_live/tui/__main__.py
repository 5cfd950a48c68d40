"""`python -m bty_live.tui [--images DIR]`: the TUI without going through `bty`."""

import sys

from bty_live.commands.tui import main

sys.exit(main())
