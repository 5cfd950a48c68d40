"""CIJOE tasks of the bty package (collected by CIJOE, not imported by bty)."""
