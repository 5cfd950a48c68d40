"""The cijoe.bty scripts, run by the real `cijoe` CLI against a Debian-like root tree.

These run CIJOE exactly as a user of the package would: `python -m cijoe.cli TASK -c CONFIG -o OUT`
with the repository on PYTHONPATH (so CIJOE's collector finds `cijoe/bty/` as a portion of the
`cijoe` namespace package) and a hand-written config naming the tree as `[bty.target] root`.
The tree is a directory here; tests/integration/test_tune.py runs the same scripts on a flashed loop device.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import yaml

from cijoe.bty.steps import expand_template, parse_mode
from cijoe.bty.systemd_units import parse_install_section
from cijoe.bty.target_root import TargetError, TargetRoot
from tests.tunedata.targetkit import IMAGE_MACHINE_ID, USER_UID, build_target_tree

REPO = Path(__file__).resolve().parents[2]
#: the `cijoe` console script of this environment (`python -m cijoe.cli` always exits 0)
CIJOE = Path(sys.executable).parent / "cijoe"
RUN_ID = "5f0c6b1d2e3a4b5c6d7e8f9a0b1c2d3e"
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyA admin@example"
KEY_B = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQKeyB backup"
MACHINE = {"vendor": "QEMU", "product": "Standard PC (Q35 + ICH9, 2009)", "model": "QEMU Standard PC",
           "serial": "SN-0042", "uuid": "9A0C3E22-1111-2222-3333-444455556666", "board": "",
           "mac": "52:54:00:12:34:56", "macs": ["52:54:00:12:34:56"]}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the tree has files owned by other users")


@dataclass
class Run:
    returncode: int
    log: str
    steps: dict[str, str]  # name -> passed / failed / not run
    output: Path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root: the tree has files owned by other users")
    return build_target_tree(tmp_path / "target")


def cijoe(tmp_path: Path, root: Path | str, steps: list[dict[str, Any]], *, run_id: str = RUN_ID,
          machine: dict[str, Any] | None = None, target: dict[str, Any] | None = None) -> Run:
    """Run a task of `steps` with the real cijoe CLI; each call gets its own output directory."""
    runs = sorted(tmp_path.glob("out-*"))
    output = tmp_path / f"out-{len(runs) + 1}"
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump({"doc": "test", "steps": steps}))
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps({
        "cijoe": {"task": {"fail_fast": True}},
        "bty": {"target": {"root": str(root), **(target or {})}, "machine": machine or MACHINE,
                "image": {"name": "demo", "blake3": "ab" * 32}, "run": {"id": run_id}},
    }))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([str(CIJOE), str(task), "-c", str(config), "-o", str(output)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    state = yaml.safe_load((output / "task.state").read_text()) if (output / "task.state").exists() else {}
    statuses = {}
    for step in state.get("steps", []):
        status = step["status"]
        outcome = next((k for k in ("failed", "passed", "skipped") if status[k]), None)
        statuses[step["name"]] = outcome or ("crashed" if status["started"] else "not run")
    return Run(proc.returncode, proc.stdout + proc.stderr, statuses, output)


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes | str | None]]:
    """Every path under root: mode, owner, and content (file) or target (link)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                content: bytes | str | None = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = path.read_bytes()
            else:
                content = None
            found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, content)
    return found


def step(step_name: str, uses: str, /, **arguments: Any) -> dict[str, Any]:
    """A task step; `with:` arguments as keywords (positional-only names, so `name=` is an argument)."""
    return {"name": step_name, "uses": uses, "with": arguments} if arguments else {"name": step_name, "uses": uses}


# -- discovery ---------------------------------------------------------------------------------------


def test_cijoe_collects_every_bty_script_from_the_namespace_package(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([str(CIJOE), "--resources"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    for script in ("hostname", "authorized_keys", "write_file", "enable_unit", "machine_id", "grow_rootfs",
                   "firstboot"):
        assert f"ident: bty.{script}\n    path: {REPO}/cijoe/bty/scripts/{script}.py" in out


# -- bty.hostname ------------------------------------------------------------------------------------


def test_hostname_from_a_mac_template_sets_etc_hostname_and_the_127_0_1_1_line(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("name", "bty.hostname", name="node-{mac_nodelim}")])

    assert run.steps == {"name": "passed"}, run.log
    assert (root / "etc/hostname").read_text() == "node-525400123456\n"
    hosts = (root / "etc/hosts").read_text().splitlines()
    assert "127.0.1.1\tnode-525400123456" in hosts
    assert "127.0.0.1\tlocalhost" in hosts and not any("debian" in line for line in hosts)


def test_hostname_templates_take_serial_and_product_in_hostname_safe_form(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("name", "bty.hostname", name="{product}-{serial}.lab.example")])

    assert run.steps == {"name": "passed"}, run.log
    assert (root / "etc/hostname").read_text() == "standard-pc-q35-ich9-2009-sn-0042.lab.example\n"
    assert "127.0.1.1\tstandard-pc-q35-ich9-2009-sn-0042.lab.example\tstandard-pc-q35-ich9-2009-sn-0042" in (
        root / "etc/hosts").read_text()


def test_a_template_field_the_machine_lacks_fails_the_step_naming_the_field(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("name", "bty.hostname", name="node-{serial}")],
                machine=MACHINE | {"serial": ""})

    assert run.steps == {"name": "failed"}
    assert "template field {serial} is empty on this machine" in run.log
    assert (root / "etc/hostname").read_text() == "debian\n"


def test_a_name_that_is_not_a_hostname_fails_the_step(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("name", "bty.hostname", name="bad_name!")])
    assert run.steps == {"name": "failed"} and "is not valid" in run.log


# -- bty.authorized_keys -----------------------------------------------------------------------------


def test_keys_for_a_target_user_get_the_targets_uid_and_sshs_modes(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("keys", "bty.authorized_keys", user="debian", keys=[KEY_A, KEY_B])])

    assert run.steps == {"keys": "passed"}, run.log
    ssh = root / "home/debian/.ssh"
    keys = ssh / "authorized_keys"
    assert keys.read_text() == f"{KEY_A}\n{KEY_B}\n"
    assert (ssh.stat().st_uid, ssh.stat().st_gid, stat.S_IMODE(ssh.stat().st_mode)) == (USER_UID, USER_UID, 0o700)
    assert (keys.stat().st_uid, stat.S_IMODE(keys.stat().st_mode)) == (USER_UID, 0o600)


def test_a_key_already_there_under_another_comment_is_not_added_again(tmp_path: Path, root: Path) -> None:
    cijoe(tmp_path, root, [step("keys", "bty.authorized_keys", keys=[KEY_A])])
    run = cijoe(tmp_path, root, [step("keys", "bty.authorized_keys",
                                      keys=[KEY_A.replace("admin@example", "renamed"), KEY_B])])

    assert run.steps == {"keys": "passed"}, run.log
    assert (root / "root/.ssh/authorized_keys").read_text() == f"{KEY_A}\n{KEY_B}\n"


def test_exclusive_keys_replace_the_ones_there(tmp_path: Path, root: Path) -> None:
    cijoe(tmp_path, root, [step("keys", "bty.authorized_keys", keys=[KEY_A])])
    cijoe(tmp_path, root, [step("keys", "bty.authorized_keys", keys=[KEY_B], exclusive=True)])
    assert (root / "root/.ssh/authorized_keys").read_text() == f"{KEY_B}\n"


def test_keys_for_a_user_the_target_lacks_fail_naming_the_user(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("keys", "bty.authorized_keys", user="alice", keys=[KEY_A])])
    assert run.steps == {"keys": "failed"}
    assert "user 'alice' does not exist in the target's /etc/passwd" in run.log


def test_something_that_is_not_a_public_key_is_refused(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("keys", "bty.authorized_keys", keys=["-----BEGIN OPENSSH PRIVATE KEY-----"])])
    assert run.steps == {"keys": "failed"} and "not an SSH public key" in run.log


# -- bty.write_file ----------------------------------------------------------------------------------


def test_write_file_sets_content_mode_and_the_targets_owner(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("motd", "bty.write_file", path="/etc/bty/motd", content="hello\n",
                                      mode="0640", owner="debian:adm")])

    assert run.steps == {"motd": "passed"}, run.log
    motd = root / "etc/bty/motd"
    assert motd.read_text() == "hello\n"
    assert (stat.S_IMODE(motd.stat().st_mode), motd.stat().st_uid, motd.stat().st_gid) == (0o640, USER_UID, 4)
    assert stat.S_IMODE((root / "etc/bty").stat().st_mode) == 0o755


def test_write_file_copies_a_source_beside_the_task(tmp_path: Path, root: Path) -> None:
    (tmp_path / "banner.txt").write_text("from a file\n")
    run = cijoe(tmp_path, root, [step("banner", "bty.write_file", path="/etc/issue.net", source="banner.txt")])
    assert run.steps == {"banner": "passed"}, run.log
    assert (root / "etc/issue.net").read_text() == "from a file\n"


def test_writing_through_an_absolute_symlink_stays_inside_the_target(tmp_path: Path, root: Path) -> None:
    os.symlink("/", root / "etc/escape")
    run = cijoe(tmp_path, root, [
        step("resolv", "bty.write_file", path="/etc/resolv.conf", content="nameserver 192.0.2.53\n"),
        step("escape", "bty.write_file", path="/etc/escape/tmp/bty-escape-test", content="x"),
    ])

    assert run.steps == {"resolv": "passed", "escape": "passed"}, run.log
    assert (root / "run/systemd/resolve/stub-resolv.conf").read_text() == "nameserver 192.0.2.53\n"
    assert os.readlink(root / "etc/resolv.conf") == "/run/systemd/resolve/stub-resolv.conf"
    assert (root / "tmp/bty-escape-test").read_text() == "x\n"
    assert not Path("/tmp/bty-escape-test").exists()


def test_a_mode_that_is_not_octal_fails_with_a_hint_about_yaml(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("motd", "bty.write_file", path="/etc/motd", content="x", mode=384)])
    assert run.steps == {"motd": "failed"} and "quote it in YAML" in run.log


# -- bty.enable_unit ---------------------------------------------------------------------------------


def test_enabling_a_unit_makes_the_wants_and_alias_links_systemctl_makes(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("ssh", "bty.enable_unit", unit="ssh.service")])

    assert run.steps == {"ssh": "passed"}, run.log
    units = root / "etc/systemd/system"
    assert os.readlink(units / "multi-user.target.wants/ssh.service") == "/usr/lib/systemd/system/ssh.service"
    assert os.readlink(units / "sshd.service") == "/usr/lib/systemd/system/ssh.service"

    by_alias = cijoe(tmp_path, root, [step("sshd", "bty.enable_unit", unit="sshd.service")])
    assert by_alias.steps == {"sshd": "passed"}, by_alias.log
    assert os.listdir(units / "multi-user.target.wants") == ["ssh.service"]  # the alias names the same unit


def test_an_instance_links_to_its_template_and_a_bare_template_uses_its_default_instance(
        tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("tty2", "bty.enable_unit", unit="getty@tty2.service"),
                                 step("default", "bty.enable_unit", unit="getty@.service")])

    assert run.steps == {"tty2": "passed", "default": "passed"}, run.log
    wants = root / "etc/systemd/system/getty.target.wants"
    assert sorted(os.listdir(wants)) == ["getty@tty1.service", "getty@tty2.service"]
    assert os.readlink(wants / "getty@tty2.service") == "/usr/lib/systemd/system/getty@.service"


def test_disable_mask_and_unmask_undo_and_block_a_unit(tmp_path: Path, root: Path) -> None:
    units = root / "etc/systemd/system"
    cijoe(tmp_path, root, [step("enable", "bty.enable_unit", unit="ssh.service")])

    run = cijoe(tmp_path, root, [step("off", "bty.enable_unit", unit="ssh.service", state="disabled"),
                                 step("mask", "bty.enable_unit", unit="ssh.service", state="masked")])
    assert run.steps == {"off": "passed", "mask": "passed"}, run.log
    assert not (units / "multi-user.target.wants/ssh.service").is_symlink()
    assert not (units / "sshd.service").is_symlink()
    assert os.readlink(units / "ssh.service") == "/dev/null"

    blocked = cijoe(tmp_path, root, [step("enable", "bty.enable_unit", unit="ssh.service")])
    assert blocked.steps == {"enable": "failed"} and "masked" in blocked.log

    cijoe(tmp_path, root, [step("unmask", "bty.enable_unit", unit="ssh.service", state="unmasked")])
    assert not (units / "ssh.service").is_symlink()


def test_a_unit_without_an_install_section_cannot_be_enabled(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("static", "bty.enable_unit", unit="static.service")])
    assert run.steps == {"static": "failed"} and "has no [Install] section" in run.log


def test_a_unit_the_target_lacks_fails_naming_where_it_looked(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("nope", "bty.enable_unit", unit="nope.service")])
    assert run.steps == {"nope": "failed"} and "unit nope.service not found in the target" in run.log


# -- bty.machine_id ----------------------------------------------------------------------------------


def test_machine_id_gives_the_clone_a_fresh_id_and_drops_the_images_host_keys_and_seed(
        tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("identity", "bty.machine_id")])

    assert run.steps == {"identity": "passed"}, run.log
    machine_id = (root / "etc/machine-id").read_text()
    assert machine_id != IMAGE_MACHINE_ID + "\n"
    assert len(machine_id) == 33 and int(machine_id, 16) and machine_id[12] == "4"
    assert stat.S_IMODE((root / "etc/machine-id").stat().st_mode) == 0o444
    assert os.readlink(root / "var/lib/dbus/machine-id") == "/etc/machine-id"
    assert sorted(os.listdir(root / "etc/ssh")) == ["sshd_config"]
    assert not (root / "var/lib/systemd/random-seed").exists()
    unit = (root / "etc/systemd/system/bty-ssh-host-keys.service").read_text()
    assert "ExecStart=/usr/bin/ssh-keygen -A" in unit and "Before=ssh.service" in unit
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/bty-ssh-host-keys.service") == \
        "/etc/systemd/system/bty-ssh-host-keys.service"


def test_each_tuning_run_gives_another_machine_id(tmp_path: Path, root: Path) -> None:
    cijoe(tmp_path, root, [step("identity", "bty.machine_id")], run_id="1" * 32)
    first = (root / "etc/machine-id").read_text()
    cijoe(tmp_path, root, [step("identity", "bty.machine_id")], run_id="2" * 32)
    assert (root / "etc/machine-id").read_text() != first


def test_machine_id_empty_leaves_it_to_systemd_and_keep_leaves_the_host_keys(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("identity", "bty.machine_id", mode="empty", ssh_host_keys="keep")])

    assert run.steps == {"identity": "passed"}, run.log
    assert (root / "etc/machine-id").read_bytes() == b""
    assert (root / "etc/ssh/ssh_host_ed25519_key").exists()
    assert not (root / "etc/systemd/system/bty-ssh-host-keys.service").exists()


# -- bty.firstboot ------------------------------------------------------------------------------------


def test_firstboot_installs_an_enabled_unit_that_runs_the_commands_once(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("later", "bty.firstboot", name="register", commands=["echo one", "echo two"])])

    assert run.steps == {"later": "passed"}, run.log
    script = root / "var/lib/bty/firstboot/register/run"
    assert script.read_text().endswith("set -eu\necho one\necho two\n")
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    unit = (root / "etc/systemd/system/register.service").read_text()
    assert "ExecStart=/var/lib/bty/firstboot/register/run" in unit
    assert "ConditionPathExists=!/var/lib/bty/firstboot/register/done" in unit
    assert "rm -f /etc/systemd/system/multi-user.target.wants/register.service" in unit
    assert "After=network-online.target" in unit
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/register.service") == \
        "/etc/systemd/system/register.service"


def test_firstboot_copies_a_script_beside_the_task(tmp_path: Path, root: Path) -> None:
    (tmp_path / "later.sh").write_text("#!/bin/sh\necho later\n")
    run = cijoe(tmp_path, root, [step("later", "bty.firstboot", script="later.sh", after_network=False)])

    assert run.steps == {"later": "passed"}, run.log
    assert (root / "var/lib/bty/firstboot/bty-firstboot/run").read_text() == "#!/bin/sh\necho later\n"
    assert "network-online" not in (root / "etc/systemd/system/bty-firstboot.service").read_text()


def test_a_firstboot_cijoe_task_needs_cijoe_in_the_image(tmp_path: Path, root: Path) -> None:
    (tmp_path / "later.yaml").write_text("doc: later\nsteps:\n- name: x\n  run: true\n")
    run = cijoe(tmp_path, root, [step("later", "bty.firstboot", cijoe_task="later.yaml")])
    assert run.steps == {"later": "failed"} and "cijoe_task needs cijoe in the image" in run.log

    (root / "usr/bin/cijoe").write_text("#!/bin/sh\n")
    run = cijoe(tmp_path, root, [step("later", "bty.firstboot", cijoe_task="later.yaml")])
    assert run.steps == {"later": "passed"}, run.log
    config = (root / "var/lib/bty/firstboot/bty-firstboot/config.toml").read_text()
    assert 'root = "/"' in config and "running = true" in config and "52:54:00:12:34:56" in config


# -- every script -------------------------------------------------------------------------------------

ALL_STEPS = [
    step("hostname", "bty.hostname", name="node-{mac_nodelim}"),
    step("keys", "bty.authorized_keys", user="debian", keys=[KEY_A]),
    step("motd", "bty.write_file", path="/etc/motd", content="tuned\n", mode="0644"),
    step("ssh", "bty.enable_unit", unit="ssh.service"),
    step("identity", "bty.machine_id"),
    step("later", "bty.firstboot", commands=["echo later"]),
]


def test_running_every_script_twice_leaves_what_running_it_once_does(tmp_path: Path, root: Path) -> None:
    first = cijoe(tmp_path, root, ALL_STEPS)
    assert set(first.steps.values()) == {"passed"}, first.log
    once = snapshot(root)

    second = cijoe(tmp_path, root, ALL_STEPS)

    assert set(second.steps.values()) == {"passed"}, second.log
    assert snapshot(root) == once


def test_a_failing_step_stops_the_task_and_the_rest_do_not_run(tmp_path: Path, root: Path) -> None:
    run = cijoe(tmp_path, root, [step("keys", "bty.authorized_keys", user="alice", keys=[KEY_A]),
                                 step("hostname", "bty.hostname", name="never")])
    assert run.returncode != 0
    assert run.steps == {"keys": "failed", "hostname": "not run"}
    assert (root / "etc/hostname").read_text() == "debian\n"


def test_scripts_refuse_to_change_the_flashers_own_root(tmp_path: Path) -> None:
    before = Path("/etc/hostname").read_bytes() if Path("/etc/hostname").exists() else None
    run = cijoe(tmp_path, "/", [step("hostname", "bty.hostname", name="hijacked")])
    assert run.steps == {"hostname": "failed"} and "refusing to change the flasher itself" in run.log
    assert (Path("/etc/hostname").read_bytes() if Path("/etc/hostname").exists() else None) == before


def test_scripts_say_what_is_missing_without_a_target_root(tmp_path: Path) -> None:
    run = cijoe(tmp_path, "", [step("hostname", "bty.hostname", name="x")])
    assert run.steps == {"hostname": "failed"} and "[bty.target] root is not set" in run.log


# -- the library, in process ------------------------------------------------------------------------


def test_paths_resolve_inside_the_root_whatever_the_links_say(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/", root / "etc/up")
    os.symlink("../../../../..", root / "etc/dots")
    os.symlink("/etc/loop2", root / "etc/loop1")
    os.symlink("/etc/loop1", root / "etc/loop2")
    target = TargetRoot(root)

    assert target.resolve("/etc/up/etc/passwd") == root / "etc/passwd"
    assert target.resolve("/etc/dots/etc/shadow") == root / "etc/shadow"
    assert target.resolve("/../../etc/hostname") == root / "etc/hostname"
    assert target.resolve("/etc/up", follow_last=False) == root / "etc/up"
    with pytest.raises(TargetError, match="too many levels of symbolic links"):
        target.resolve("/etc/loop1/x")


def test_templates_cannot_reach_attributes() -> None:
    with pytest.raises(TargetError, match="unknown template field"):
        expand_template("{mac.__class__}", {"mac": "52-54-00-12-34-56"})
    assert expand_template("a-{mac}", {"mac": "52-54"}) == "a-52-54"


def test_install_sections_join_continuations_and_repeated_keys() -> None:
    parsed = parse_install_section("[Unit]\nWantedBy=not-this.target\n[Install]\n# comment\n"
                                   "WantedBy=a.target \\\n  b.target\nWantedBy=c.target\nAlias=x.service\n")
    assert parsed == {"WantedBy": ["a.target", "b.target", "c.target"], "Alias": ["x.service"]}


@pytest.mark.parametrize(("text", "mode"), [("0644", 0o644), ("600", 0o600), ("0o755", 0o755), ("1777", 0o1777)])
def test_modes_are_octal_strings(text: str, mode: int) -> None:
    assert parse_mode(text) == mode


@needs_root
def test_ownership_comes_from_the_targets_passwd_not_the_flashers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nops:x:4242:4343::/home/ops:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nops:x:4343:\nwheel:x:10:\n")
    target = TargetRoot(root)
    assert target.owner_ids("ops") == (4242, 4343)
    assert target.owner_ids("ops:wheel") == (4242, 10)
    assert target.owner_ids("1001:1002") == (1001, 1002)
    with pytest.raises(TargetError, match="group 'nope'"):
        target.owner_ids("ops:nope")
