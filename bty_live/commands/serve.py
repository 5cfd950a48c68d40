"""`bty serve`: the reference server of server mode, and its shell commands (see bty_live.server)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Serve images, iPXE scripts and plans to netbooting machines, and keep what they report.

  bty serve --images DIR --state DIR --listen HOST:PORT --token-file F [--netboot DIR]
            [--admin-token-file A]                          with the operator's web UI at /ui/
  bty serve assign --state DIR MAC IMAGE --disk SELECTOR    what a machine shall do
  bty serve cancel --state DIR MAC...                        take machines' plans away
  bty serve machines --state DIR [--json]                   each machine, its status and receipt
  bty serve reset --state DIR MAC                           let a machine enrol again
  bty serve ipxe-bootstrap --url URL --token-file F         the first iPXE script (TFTP/DHCP)

Machines boot iPXE, which fetches the bootstrap script (from TFTP, or DHCP's boot file name),
which chains to GET /ipxe/MAC on this server. That script boots the netboot live system from
--netboot DIR with bty.server= and bty.token= on its kernel command line, whose `bty agent` then
sends its inventory, asks for its plan, streams the image (GET /images/FILE, with Range), posts
its progress and its receipt, and reboots. A machine whose flash is done gets a script that exits
iPXE, so the firmware boots the disk.

Every request but /healthz and /netboot/ needs the token of --token-file (Authorization: Bearer,
or ?token= for iPXE): without it the answer is 403 and nothing changes. Every netbooted machine
holds that token, so it only enrols: a machine's first inventory is answered with a credential
of its own (bound to its MAC, stored hashed), and every later request about that MAC must carry
it (X-Bty-Credential); the token alone is then refused (403). A machine that reboots into the
netboot system enrols again once per `assign`, or after `bty serve reset MAC`. The state (machines,
plans, events, receipts) is SQLite in --state DIR and survives restarts; every agent's run, passed
or failed, is appended to the known-good ledger (--ledger, default DIR/ledger.jsonl of --images),
which `bty ledger` and `bty images` read as on a stick. Plans are assigned here, from the
server's shell, or in the web UI.

The operator's web UI (/ui/: machines with live progress, a machine's inventory and events,
images, assigning to several machines at once) is on with --admin-token-file A, a token of its
own: browsers log in with it on a form (a signed, HttpOnly, SameSite=Strict session cookie;
every form is CSRF-checked), scripts send it as Authorization: Bearer. The agents' token and
their credentials never open the UI.
"""

ASSIGN = """\
Give MAC a new plan (a new run id), replacing any earlier one. The agent picks it up the next
time it asks; a machine that finished or failed its last run is flashed again only after this.

  bty serve assign --state DIR 52:54:00:12:34:56 demo --disk serial=S3Z1NB0K
  bty serve assign --state DIR 52:54:00:12:34:56 --action localboot

IMAGE is a name, file name or blake3 prefix from the server's images directory (recorded in the
state by `bty serve`, or --images); it must have a manifest (`bty images add`). SELECTOR must
match exactly one eligible disk on the machine (see its inventory: `bty serve machines --json`).

IMAGE may also be an http:// or https:// URL (object storage, a CDN, a presigned URL): the agent
streams it from there, not through this server, and the server's token is not sent along. It
must come with a digest, read now: the manifest beside it (URL.toml, what `bty images add`
writes) or --blake3 HEX (a presigned URL needs it). Listings show the URL without its query
string; only the agent's request carries it.

  bty serve assign --state DIR 52:54:00:12:34:56 https://store.example/os/v3.img.zst --disk tran=nvme
"""


RESET = """\
Forget MAC's credential and let it enrol again: its next inventory with the shared token gets a
new credential, and the old one is refused from now on. For a machine that rebooted into the
netboot system (its agent starts with the shared token only) while its plan is not a new one:
`bty serve assign` opens enrolment once by itself. Plans, events and receipts are kept.

  bty serve reset --state DIR 52:54:00:12:34:56
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("serve", help="serve images and plans to netbooting machines (server mode)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", metavar="DIR", type=Path, help="images directory (with manifests)")
    parser.add_argument("--state", metavar="DIR", type=Path, help="state directory (SQLite), created if needed")
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to listen on, e.g. 0.0.0.0:8080 "
                        "(port 0: any free port, printed at start)")
    parser.add_argument("--token-file", metavar="FILE", type=Path, help="file holding the token agents present "
                        "(make one: openssl rand -hex 16 > FILE)")
    parser.add_argument("--netboot", metavar="DIR", type=Path, help="directory with the netboot kernel and initrd "
                        "(from `make netboot`)")
    parser.add_argument("--kernel", metavar="NAME", default="vmlinuz", help="kernel file in --netboot DIR "
                        "(default vmlinuz)")
    parser.add_argument("--initrd", metavar="NAME", default="initrd", help="initrd file in --netboot DIR "
                        "(default initrd)")
    parser.add_argument("--kernel-args", metavar="ARGS", help="more kernel command-line arguments for netbooted "
                        "machines (default: console=tty0 console=ttyS0,115200)")
    parser.add_argument("--public-url", metavar="URL", help="the URL machines reach this server at (default: the "
                        "host and port each request came to)")
    parser.add_argument("--poll", metavar="SECONDS", type=float, default=10.0,
                        help="how long a machine with nothing to do waits before asking again (default 10)")
    parser.add_argument("--ledger", metavar="FILE", type=Path, help="the known-good ledger the agents' runs are "
                        "appended to (default: ledger.jsonl in --images DIR, as on a stick; read it with `bty ledger`)")
    parser.add_argument("--admin-token-file", metavar="FILE", type=Path,
                        help="file holding the operator's token: turns on the web UI at /ui/ (a token of its own, "
                             "never the agents'; make one with `openssl rand -hex 16 > FILE; chmod 600 FILE`)")
    parser.add_argument("--tls-cert", metavar="FILE", type=Path, help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", type=Path, help="the certificate's private key (PEM)")
    parser.set_defaults(func=run)

    commands = parser.add_subparsers(dest="serve_command", metavar="SUBCOMMAND")
    assign = commands.add_parser("assign", help="give a machine its plan", description=ASSIGN,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    assign.add_argument("--state", metavar="DIR", type=Path, required=True, help="the server's state directory")
    assign.add_argument("mac", metavar="MAC", help="the machine's boot NIC, e.g. 52:54:00:12:34:56")
    assign.add_argument("image", metavar="IMAGE", nargs="?", help="image to flash (with --action flash)")
    assign.add_argument("--disk", metavar="SELECTOR", help="disk selector or device, e.g. serial=S3Z1NB0K, "
                        "tran=nvme,size>=100G, path=/dev/nvme0n1")
    assign.add_argument("--action", choices=["flash", "tui", "localboot", "wait"], default="flash",
                        help="flash (default), tui: hand the console to a person, localboot: boot the disk, "
                        "wait: keep the machine waiting")
    assign.add_argument("--verify", choices=["readback", "stream", "off"], default="readback",
                        help="verify mode of the flash (default readback)")
    assign.add_argument("--tune", metavar="TASK|off", help="post-flash tuning task (default: the image "
                        "manifest's [tune] task; off: none)")
    assign.add_argument("--images", metavar="DIR", type=Path, help="images directory to check IMAGE against "
                        "(default: the one `bty serve` recorded in the state)")
    assign.add_argument("--blake3", metavar="HEX", help="an image given by URL: the blake3 of its decompressed "
                        "bytes (else its URL.toml must be there)")
    assign.add_argument("--ca-file", metavar="FILE", type=Path, help="an image given by URL over https: a CA "
                        "bundle to verify its host with, besides the system's (for reading URL.toml now)")
    assign.set_defaults(func=run_assign)

    machines = commands.add_parser("machines", help="list machines with their status, plan and last receipt",
                                   description="Every machine that reported to the server: its model, status, "
                                   "plan and last receipt. --json prints everything, inventories included.")
    machines.add_argument("--state", metavar="DIR", type=Path, required=True, help="the server's state directory")
    machines.add_argument("--json", action="store_true", help="print JSON (one object with a list of machines)")
    machines.set_defaults(func=run_machines)

    cancel = commands.add_parser("cancel", help="take machines' plans away; a flash under way stops, its disk wiped",
                                 description="Take the plan of each MAC away: the machine waits for a new one. A "
                                 "flash under way stops at its agent's next report (within a second or so): the "
                                 "server refuses the old run's reports, the agent stops the engine, which wipes the "
                                 "disk's partition-table signatures, so it is never left half-written and "
                                 "bootable-looking. A run that is over (done, failed) has nothing to cancel.")
    cancel.add_argument("--state", metavar="DIR", type=Path, required=True, help="the server's state directory")
    cancel.add_argument("macs", metavar="MAC", nargs="+", help="the machines' boot NICs")
    cancel.set_defaults(func=run_cancel)

    reset = commands.add_parser("reset", help="let a machine enrol again (forget its credential)",
                                description=RESET, formatter_class=argparse.RawDescriptionHelpFormatter)
    reset.add_argument("--state", metavar="DIR", type=Path, required=True, help="the server's state directory")
    reset.add_argument("mac", metavar="MAC", help="the machine's boot NIC, e.g. 52:54:00:12:34:56")
    reset.set_defaults(func=run_reset)

    bootstrap = commands.add_parser("ipxe-bootstrap", help="print the first iPXE script, for a TFTP root or DHCP",
                                    description="Print the iPXE script that chains a booting NIC to this server's "
                                    "per-MAC script. Put it in the TFTP root as the boot file (e.g. boot.ipxe), or "
                                    "serve it by DHCP to iPXE clients.")
    bootstrap.add_argument("--url", metavar="URL", required=True, help="the server as machines reach it, e.g. "
                           "http://10.0.2.2:8080")
    bootstrap.add_argument("--token-file", metavar="FILE", type=Path, required=True, help="the server's token file")
    bootstrap.add_argument("-o", "--output", metavar="FILE", type=Path, help="write to FILE instead of stdout")
    bootstrap.set_defaults(func=run_bootstrap)


def run(args: argparse.Namespace) -> int:
    from bty_live.errors import UsageError
    from bty_live.server.config import DEFAULT_KERNEL_ARGS, NetbootFiles, ServerConfig, read_token_file
    from bty_live.server.config import token_file_is_private as private
    from bty_live.server.runner import Tls, parse_listen, serve_forever

    missing = [flag for flag, value in (("--images", args.images), ("--state", args.state),
                                        ("--listen", args.listen), ("--token-file", args.token_file)) if not value]
    if missing:
        raise UsageError(f"bty serve needs {', '.join(missing)} (see bty serve --help)")
    if not args.images.is_dir():
        raise UsageError(f"images directory {args.images} does not exist; create it and `bty images add` images")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("HTTPS needs both --tls-cert and --tls-key")
    token = read_token_file(args.token_file)
    if not private(args.token_file):
        print(f"bty serve: warning: {args.token_file} is readable by other users; chmod 600 it", file=sys.stderr)
    netboot = None
    if args.netboot is not None:
        netboot = NetbootFiles(args.netboot, kernel=args.kernel, initrd=args.initrd,
                               kernel_args=DEFAULT_KERNEL_ARGS if args.kernel_args is None else args.kernel_args)
        for name in (netboot.kernel, netboot.initrd):
            if not (args.netboot / name).is_file():
                print(f"bty serve: warning: {args.netboot / name} does not exist; netbooting machines will fail "
                      "until it does (`make netboot`)", file=sys.stderr)
    config = ServerConfig(images_dir=args.images, state_dir=args.state, token=token, netboot=netboot,
                          public_url=args.public_url, poll=args.poll, ledger=args.ledger,
                          admin_token=_admin_token(args.admin_token_file, token), https=args.tls_cert is not None)
    host, port = parse_listen(args.listen)
    tls = Tls(args.tls_cert, args.tls_key) if args.tls_cert else None
    serve_forever(config, host, port, tls)
    return 0


def _admin_token(path: Path | None, agent_token: str) -> str | None:
    """The operator's token, or None (the UI stays off, and the server says how to turn it on)."""
    from bty_live.errors import UsageError
    from bty_live.server.config import read_token_file, token_file_is_private

    if path is None:
        print("bty serve: the web UI is off; turn it on with --admin-token-file FILE (a token of its own)",
              file=sys.stderr)
        return None
    admin = read_token_file(path)
    if admin == agent_token:
        raise UsageError(f"{path} holds the agents' token: the operator's token must be another one, or every "
                         "netbooted machine could open the UI; make one with `openssl rand -hex 16`")
    if not token_file_is_private(path):
        print(f"bty serve: warning: {path} is readable by other users; chmod 600 it", file=sys.stderr)
    return admin


def _mac_argument(text: str) -> str:
    """MAC of the command line, normalised; a malformed one is a usage error (exit 2)."""
    from bty_live.errors import UsageError
    from bty_live.protocol.wire import normalise_mac

    try:
        return normalise_mac(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def run_assign(args: argparse.Namespace) -> int:
    from bty_live.image.remote import is_image_url
    from bty_live.protocol.wire import Action
    from bty_live.server.service import IMAGES_DIR_SETTING, Deployments
    from bty_live.server.state import Store

    mac = _mac_argument(args.mac)
    with Store(args.state) as store:
        images = args.images or (Path(found) if (found := store.setting(IMAGES_DIR_SETTING)) else None)
        if images is None and args.action == "flash" and not is_image_url(args.image or ""):
            print("bty serve assign: warning: no images directory known yet (start `bty serve` once, or pass "
                  "--images): IMAGE is not checked now", file=sys.stderr)
        plan = Deployments(store, images).assign(mac, Action(args.action), image=args.image, disk=args.disk,
                                                 verify=args.verify, tune=args.tune, blake3=args.blake3,
                                                 cafile=args.ca_file)
    what = f"flash {plan.shown_image} onto {plan.disk}" if plan.action == Action.FLASH else plan.action.value
    print(f"{mac}: {what} (run {plan.run_id})")
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    from bty_live.errors import UsageError
    from bty_live.server.service import Deployments
    from bty_live.server.state import Store

    macs = [_mac_argument(mac) for mac in args.macs]
    refused: list[str] = []
    with Store(args.state) as store:
        service = Deployments(store, None)
        for mac in macs:
            try:
                plan = service.cancel(mac)
            except UsageError as exc:
                refused.append(str(exc))
                continue
            print(f"{mac}: run {plan.run_id} cancelled; the machine waits for a new plan")
    if refused:
        raise UsageError("; ".join(refused))
    return 0


def run_reset(args: argparse.Namespace) -> int:
    from bty_live.server.service import Deployments
    from bty_live.server.state import Store

    mac = _mac_argument(args.mac)
    with Store(args.state) as store:
        Deployments(store, None).reset(mac)
    print(f"{mac}: may enrol again; its old credential is refused from now on")
    return 0


def run_machines(args: argparse.Namespace) -> int:
    from bty_live.server.service import Deployments
    from bty_live.server.state import Store

    with Store(args.state) as store:
        rows = Deployments(store, None).overview()
    if args.json:
        print(json.dumps({"machines": rows}, indent=2))
        return 0
    if not rows:
        print("no machine has reported to this server yet")
        return 0
    table = [("MAC", "MODEL", "STATUS", "PLAN", "LAST SEEN", "LAST RECEIPT")]
    table += [_row(row) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1])
    return 0


def _row(row: dict[str, Any]) -> tuple[str, str, str, str, str, str]:
    plan = row.get("plan")
    if plan is None:
        plan_text = "-"
    elif plan["action"] == "flash":
        plan_text = f"flash {plan['image']} -> {plan['disk']} [{plan['state']}]"
    else:
        plan_text = f"{plan['action']} [{plan['state']}]"
    receipt = row.get("receipt")
    receipt_text = "-"
    if receipt is not None:
        body = receipt["receipt"]
        receipt_text = (f"{receipt['result']}: {receipt['image_name']} blake3 {receipt['image_blake3'][:16]}... "
                        f"onto {body.get('target_path', '?')} at {body.get('finished_at', '?')}")
    status = row["status"] + (f" ({row['detail']})" if row.get("detail") and row["status"] != "done" else "")
    seen = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["last_seen"]))
    return row["mac"], row["model"] or "-", status, plan_text, seen, receipt_text


def run_bootstrap(args: argparse.Namespace) -> int:
    from bty_live.protocol.httpconn import parse_url
    from bty_live.server.config import read_token_file
    from bty_live.server.ipxe import bootstrap_script

    parse_url(args.url)
    script = bootstrap_script(args.url, read_token_file(args.token_file))
    if args.output is not None:
        args.output.write_text(script)
    else:
        print(script, end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from bty_live.commands.standalone import run_standalone

    return run_standalone(register, ["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
