"""End-to-end tests of the live stick in QEMU (see conftest.py)."""
