"""CIJOE scripts of the bty package (collected by CIJOE, not imported by bty)."""
