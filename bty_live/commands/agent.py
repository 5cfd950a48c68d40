"""`bty agent`: the netbooted flasher of server mode (see bty_live.agent)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

DESCRIPTION = """\
Ask a bty server what to do with this machine, and do it: the agent of server mode.

The live system starts it at boot when the kernel command line has bty.server=URL (iPXE puts
it there, with bty.token=T and BOOTIF=01-MAC). Options override the command line.

  1. inventory: send the machine's DMI identity, NICs and disks (with ids and eligibility)
  2. ask: the server answers flash IMAGE onto SELECTOR, tui, localboot, or wait
  3. flash: stream the image over HTTP(S) straight into the engine (no temp file); a dropped
     connection resumes with a Range request where it stopped; the digest must match the
     server's manifest and the disk is read back; progress goes to the server as it happens
  4. report: post the receipt; then reboot into the flashed disk (--no-reboot: exit instead)

The token of bty.token= is shared by every netbooted machine: it only enrols. The first
inventory is answered with this machine's own credential (bound to its MAC, kept in memory),
which every later request carries; the server refuses the token alone for an enrolled machine,
until its operator runs `bty serve reset MAC` or assigns it again. The token goes to no host but
the server (unless the plan says so), the credential to none.

Waiting for a plan, the agent asks again after the server's poll interval (at most --max-poll).
A failed flash is reported, nothing more is written (the engine wipes what it started), and the
agent waits for a new assignment; a refused token stops it at once. A download that does not
finish within --download-deadline fails the run. SIGTERM, SIGHUP, SIGQUIT and Ctrl-C stop a
flash (the engine wipes), report the run failed and exit 128+N. Exit codes: 0 done (or handed
over to the TUI); 75 gave up waiting (--wait-limit); else the failure's code (bty --help).
"""

#: gave up waiting for a plan (EX_TEMPFAIL)
EXIT_WAIT_LIMIT = 75


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("agent", help="ask a bty server for this machine's plan and carry it out",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", metavar="URL", help="the bty server (default: bty.server= on the kernel "
                        "command line)")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", metavar="T", help="the server's token (default: bty.token=)")
    token.add_argument("--token-file", metavar="FILE", type=Path, help="read the token from FILE")
    parser.add_argument("--mac", metavar="MAC", help="who this machine is to the server (default: the boot NIC "
                        "from BOOTIF=, else the first NIC)")
    parser.add_argument("--ca-file", metavar="FILE", type=Path, help="CA certificate(s) to verify an https:// "
                        "server with (default: the system's CAs)")
    parser.add_argument("--no-reboot", action="store_true", help="do not reboot when done; exit 0 instead")
    parser.add_argument("--max-poll", metavar="SECONDS", type=float, default=60.0,
                        help="longest wait between two questions to the server (default 60)")
    parser.add_argument("--wait-limit", metavar="SECONDS", type=float,
                        help=f"give up after waiting this long for a plan and exit {EXIT_WAIT_LIMIT} "
                        "(default: wait forever)")
    parser.add_argument("--download-deadline", metavar="SECONDS", type=float,
                        help="fail the run when the image download takes longer (default: 10 minutes plus "
                        "1 s per MiB of the image)")
    parser.add_argument("--cmdline", metavar="TEXT", help="use TEXT instead of /proc/cmdline")
    parser.set_defaults(func=run)


def _cmdline_values(cmdline: str) -> dict[str, str]:
    values = {}
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if sep and key in ("bty.server", "bty.token", "bty.mac"):
            values[key[4:]] = value
    return values


def run(args: argparse.Namespace) -> int:
    from bty_live.agent.api import ServerApi
    from bty_live.agent.runner import Agent, AgentConfig, AgentState, Effects
    from bty_live.errors import UsageError, exit_code_for
    from bty_live.protocol.wire import normalise_mac
    from bty_live.render.events import MilestoneLines
    from bty_live.signals import raise_on_stop_signals
    from bty_live.stick.unattended import read_cmdline
    from bty_live.system.actions import systemd_actions
    from bty_live.system.machine import read_machine_identity

    cmdline = args.cmdline if args.cmdline is not None else read_cmdline()
    values = _cmdline_values(cmdline)
    server = args.server or values.get("server")
    if not server:
        print("bty agent: no bty.server= on the kernel command line and no --server; nothing to do")
        return 0
    token = args.token or values.get("token")
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise UsageError(f"token file {args.token_file} cannot be read ({exc.strerror}); check --token-file") \
                from exc
    mac_text = args.mac or values.get("mac") or read_machine_identity(cmdline=cmdline).primary_mac
    if not mac_text:
        raise UsageError("this machine has no network interface with a MAC address and none was given; pass --mac")
    try:
        mac = normalise_mac(mac_text)
    except ValueError as exc:
        raise UsageError(f"{exc}; fix --mac or BOOTIF=") from exc

    def say(line: str) -> None:
        print(f"bty agent: {line}", file=sys.stderr, flush=True)

    config = AgentConfig(mac=mac, token=token, cafile=args.ca_file, reboot=not args.no_reboot,
                         max_poll=args.max_poll, wait_limit=args.wait_limit,
                         download_deadline=args.download_deadline)
    effects = Effects(reboot=systemd_actions().reboot, say=say, console=MilestoneLines(out=sys.stderr))
    # SIGTERM, SIGHUP, SIGQUIT, Ctrl-C: StopSignal; the engine wipes, the agent reports the run
    # failed, and the Cancelled it raises ends in exit 128+N (bty_live.cli.run_guarded)
    raise_on_stop_signals()
    outcome = Agent(ServerApi(server, token, cafile=args.ca_file), config, effects).run()
    if outcome.state != AgentState.WAIT:
        return 0
    say(outcome.message)
    return exit_code_for(outcome.failure) if outcome.failure is not None else EXIT_WAIT_LIMIT


def main(argv: Sequence[str] | None = None) -> int:
    from bty_live.commands.standalone import run_standalone

    return run_standalone(register, ["agent", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
