"""The live stick's own behaviour around the front-ends: unattended mode (kernel command line),
the console font on large screens, and the BTY_IMAGES partition (grow, mount)."""
