# bty-live developer entry points. `make setup` is what a fresh Debian 12/13 machine runs first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BTY := $(VENV)/bin/bty
STAMP := $(VENV)/.installed

.PHONY: setup test bench bench-reflash bench-server lint demo demo-loop clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-host.sh
	scripts/setup-host.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m compileall -q bty_live cijoe
	touch $(STAMP)

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check bty_live cijoe tests tools
	$(VENV)/bin/mypy bty_live
	$(VENV)/bin/mypy -p cijoe.bty

bench: setup
	$(PY) -m compileall -q bty_live  # bytecode as installed: startup is part of what is measured
	$(PY) tools/bench.py --size 1G 4G --loop both --runs 3 --markdown bench-out/table.md
	$(PY) tools/bench_tui.py
	$(MAKE) bench-reflash

# A disk holding image v1 gets v2 (a few scattered MiB changed): bty's differential flash against
# bty --full, casync seeded with the disk, and zstd -dc | dd (tools/bench_reflash.py).
bench-reflash: setup
	$(PY) -m compileall -q bty_live
	$(PY) tools/bench_reflash.py --size 2G --loop both --runs 3 --markdown bench-out/reflash/table.md

bench-server: setup
	$(PY) tools/bench_server.py --reflash
	$(PY) tools/bench_ui.py

# The main job: build the demo OS and the live stick, flash the demo onto a virtual NVMe disk
# unattended in QEMU, then boot that disk alone (see live-demo below).
demo: live-demo

# The flasher alone: a small disk image flashed onto a loop device with `bty flash`.
demo-loop: setup
	$(PY) tools/demo.py

clean:
	rm -rf build bench-out demo-out .pytest_cache .mypy_cache .ruff_cache

# ---- the live stick, the demo OS, the QEMU rig (mkosi; root; see images/README.md, qemu/README.md)
.PHONY: image demo-image e2e qemu-stick qemu-unattended live-demo

DEMO_OS_INPUTS := $(shell find images/demo-os -type f 2>/dev/null)

# The demo OS (mkosi) -> images/demo.img.zst (squashfs root) and images/demo-tunable.img.zst (the
# same system on ext4, tuned by images/demo-tunable.task.yaml), each with its manifest; one mkosi
# build makes both, rebuilt when the demo's config changes.
demo-image: setup images/demo.img.zst images/demo-tunable.img.zst

images/demo.img.zst images/demo-tunable.img.zst &: $(DEMO_OS_INPUTS) scripts/build-demo-image.sh
	scripts/build-demo-image.sh

# The stick -> build/bty-live.img, bundling images/*. CMDLINE="bty.image=... bty.disk=..." adds
# kernel command-line keys to the boot entries (an unattended stick).
image: setup
	CMDLINE="$(CMDLINE)" scripts/build-image.sh

# End-to-end tests in QEMU (build the demo OS and a test stick first when missing).
e2e: setup
	BTY_E2E_REQUIRE=1 $(PY) -m pytest -p no:cacheprovider -m e2e tests/e2e -v

# By hand: boot the stick with two blank NVMe targets, serial console here (Ctrl-a x quits).
qemu-stick:
	qemu/boot-stick.sh $(QEMU_ARGS)

# The unattended chain: flash the demo onto TARGET1, power off, boot TARGET1 alone.
qemu-unattended:
	qemu/boot-stick.sh --cmdline 'bty.image=demo bty.disk=serial=TARGET1 bty.after=poweroff' \
		--serial-log build/qemu/unattended.log --fail-on 'bty unattended: FAILED' --timeout 900
	qemu/boot-disk.sh build/qemu/target1.img --serial TARGET1 --serial-log build/qemu/target1.log \
		--expect 'bty-demo: booted' --timeout 600

# The README's main job: the demo OS, a stick bundling it, the unattended flash in QEMU, and the
# flashed target booting alone.
live-demo: demo-image image qemu-unattended

# ---- server mode: the netboot flavour of the live system, and the iPXE chain in QEMU (root;
# see qemu/README.md "Netboot")
.PHONY: netboot qemu-netboot

# The stick's mkosi output, post-processed for iPXE: build/netboot/vmlinuz + build/netboot/initrd
# (the stick's root squashfs inside the initrd). `bty serve --netboot build/netboot` serves them.
netboot: setup
	scripts/build-netboot.sh

# By hand: bty serve on this host's loopback, the demo image assigned to a VM's blank NVMe disk
# (serial BTYDISK), the VM booted from the network (iPXE), serial console here (Ctrl-a x quits).
qemu-netboot: setup
	qemu/netboot.sh $(QEMU_ARGS)
