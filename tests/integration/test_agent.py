"""`bty agent` against a real `bty serve` on 127.0.0.1, flashing real loop devices: the image
streams in, the disk verifies, the server lists the receipt; a cut connection resumes; a wrong
token or a refused disk writes nothing. Plus the event uplink that must never slow a flash."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import blake3
import pytest

from bty_live import cli
from bty_live.agent.api import ServerApi
from bty_live.agent.inventory import collect_inventory
from bty_live.agent.runner import Agent, AgentConfig, AgentOutcome, AgentState, Effects
from bty_live.agent.uplink import EventUplink
from bty_live.commands import serve
from bty_live.errors import (
    ImageError,
    ImageFetchError,
    ServerUnavailableError,
    TargetRefusedError,
    TokenRefusedError,
    UsageError,
    exit_code_for,
)
from bty_live.events import Event, Kind, Phase
from bty_live.flash.ledger import read_ledger
from bty_live.image.source import _scan_zstd
from bty_live.image.zstd_frames import PACKED_FRAME_SIZE
from bty_live.protocol.httpconn import Backoff
from bty_live.protocol.wire import Action, AgentPlan
from bty_live.server.images import ServedImage
from bty_live.server.runner import ServerThread
from bty_live.server.service import Deployments
from tests.conftest import LoopDevice
from tests.imagekit import MiB, build_gpt_image, compress, device_equals_file, looks_blank
from tests.netkit import MAC, TOKEN, CutProxy, make_config, running_server, serving_files

IMAGE_SIZE = 64 * MiB
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("img") / "disk.img", IMAGE_SIZE)


@pytest.fixture(scope="module")
def zst_image(raw_image: Path) -> Path:
    return compress(raw_image, "zst")


def images_with(tmp_path: Path, *files: Path) -> Path:
    directory = tmp_path / "images"
    directory.mkdir(exist_ok=True)
    for file in files:
        os.link(file, directory / file.name)
        assert cli.main(["images", "add", str(directory / file.name)]) == 0
    return directory


@pytest.fixture
def server(tmp_path: Path, zst_image: Path, raw_image: Path) -> Iterator[ServerThread]:
    images = images_with(tmp_path, zst_image, raw_image)
    with running_server(make_config(tmp_path, images)) as running:
        yield running


@dataclass
class Recorder:
    """Effects that record instead of acting: no reboot, no sleeping, lines kept."""

    reboots: int = 0
    lines: list[str] = field(default_factory=list)
    states: list[AgentState] = field(default_factory=list)

    def effects(self) -> Effects:
        def reboot() -> None:
            self.reboots += 1

        return Effects(reboot=reboot, say=self.lines.append, sleep=lambda _seconds: None)

    def on_state(self, state: AgentState, _plan: AgentPlan | None) -> None:
        self.states.append(state)


def run_agent(url: str, recorder: Recorder, *, token: str = TOKEN, wait_limit: float | None = 0.0,
              on_state: Callable[[AgentState, AgentPlan | None], None] | None = None,
              download_deadline: float | None = None) -> AgentOutcome:
    config = AgentConfig(mac=MAC, token=token, wait_limit=wait_limit, event_interval=0.05,
                         download_backoff=Backoff(attempts=4, first=0.0), download_deadline=download_deadline)
    agent = Agent(ServerApi(url, token), config, recorder.effects(), on_state=on_state or recorder.on_state)
    return agent.run()


def assign(server: ServerThread, tmp_path: Path, image: str, disk: str) -> str:
    return Deployments(server.store, tmp_path / "images").assign(MAC, Action.FLASH, image=image, disk=disk).run_id


def device_digest(loop: LoopDevice, size: int) -> str:
    with open(loop.path, "rb") as dev:
        return hashlib.sha256(dev.read(size)).hexdigest()


# -- flashing ------------------------------------------------------------------------------------


def test_agent_flashes_a_loop_device_from_the_server_and_the_server_lists_the_receipt(
        server: ServerThread, tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)  # same size: no GPT fix-up changes the image's bytes
    run = assign(server, tmp_path, "disk.img.zst", f"path={loop.path}")
    recorder = Recorder()

    outcome = run_agent(server.url, recorder)

    assert outcome.state == AgentState.REBOOT and recorder.reboots == 1
    assert recorder.states[:4] == [AgentState.INVENTORY, AgentState.ASK, AgentState.FLASH, AgentState.REPORT]
    assert device_equals_file(loop.path, raw_image)
    stored = server.store.last_receipt(MAC)
    assert stored is not None and stored.run_id == run and stored.result == "ok"
    assert stored.receipt["stream_check"] == "match" and stored.receipt["readback_check"] == "match"
    assert stored.receipt["target_path"] == loop.path and stored.receipt["download"]["resumes"] == 0
    machine = server.store.machine(MAC)
    assert machine is not None and machine.status == "done"
    assert any(d["path"] == loop.path and d["eligible"] for d in machine.inventory["disks"])
    kinds = [(e.event["phase"], e.event["kind"]) for e in server.store.events(MAC, run)]
    for expected in [("write", "start"), ("write", "end"), ("verify", "end"), ("done", "end")]:
        assert expected in kinds
    assert kinds.index(("write", "start")) < kinds.index(("write", "end")) < kinds.index(("done", "end"))
    [record] = read_ledger(tmp_path / "images" / "ledger.jsonl").records
    assert record.result == "passed" and record.known_good and record.disk_path == loop.path
    assert record.image_blake3 == stored.image_blake3 and MAC in record.macs


def test_a_machine_reflashed_with_a_newer_image_downloads_only_the_frames_that_differ(
        tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    newer = tmp_path / "v2.img"
    newer.write_bytes(raw_image.read_bytes())
    with open(newer, "r+b") as f:  # a package update: 64 KiB rewritten inside one 8 MiB block
        f.seek(33 * MiB)
        f.write(os.urandom(64 << 10))
    for raw, name in ((raw_image, "v1.img.zst"), (newer, "v2.img.zst")):
        assert cli.main(["images", "pack", str(raw), "-o", str(images / name)]) == 0
    loop = make_loop(IMAGE_SIZE)
    with running_server(make_config(tmp_path, images)) as server:
        assign(server, tmp_path, "v1.img.zst", f"path={loop.path}")
        assert run_agent(server.url, Recorder()).state == AgentState.REBOOT  # a blank disk: written whole
        proxy = CutProxy(server.socket.getsockname()[:2])
        assign(server, tmp_path, "v2.img.zst", f"path={loop.path}")

        outcome = run_agent(proxy.url, Recorder())

        assert outcome.state == AgentState.REBOOT and device_equals_file(loop.path, newer)
        stored = server.store.last_receipt(MAC)
        assert stored is not None and stored.receipt["differential"]["mode"] == "differential"
        assert stored.receipt["readback_check"] == "match"
    frames, _ = _scan_zstd(images / "v2.img.zst")
    on_the_wire = sum(s.sent for s in proxy.seen if s.request_line.startswith("GET /images/v2.img.zst "))
    # the head (frame 0), the frame of the changed block, at most those of the partition tables'
    # blocks (first and last, which the last flash's fix-ups may have changed), the seek table
    changed = (33 * MiB) // PACKED_FRAME_SIZE
    most = 2 * frames[0].length + frames[changed].length + frames[-1].length + 64 * 1024
    assert on_the_wire <= most < (images / "v2.img.zst").stat().st_size, [(s.range, s.sent) for s in proxy.seen]
    assert any(s.request_line.startswith("GET /images/v2.img.zst.toml ") for s in proxy.seen)


def test_a_connection_cut_mid_transfer_resumes_and_the_disk_still_verifies(
        server: ServerThread, tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    proxy = CutProxy(server.socket.getsockname()[:2], cut_after=24 * MiB)
    loop = make_loop(IMAGE_SIZE)
    run = assign(server, tmp_path, "disk.img", f"path={loop.path}")  # raw: 64 MiB on the wire

    outcome = run_agent(proxy.url, Recorder())

    assert outcome.state == AgentState.REBOOT and proxy.cuts == 1
    assert device_equals_file(loop.path, raw_image)
    [resume] = proxy.resumes()
    assert 0 < int(resume.removeprefix("bytes=").rstrip("-")) <= 24 * MiB
    stored = server.store.last_receipt(MAC)
    assert stored is not None and stored.receipt["download"]["resumes"] == 1
    assert stored.receipt["readback_check"] == "match"
    messages = [e.event["message"] for e in server.store.events(MAC, run)]
    assert any("resumed there with a Range request" in m for m in messages)


def test_the_cli_agent_takes_server_token_and_mac_from_the_kernel_command_line(
        server: ServerThread, tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    assign(server, tmp_path, "disk.img.zst", f"name={loop.name}")
    cmdline = f"quiet bty.server={server.url} bty.token={TOKEN} BOOTIF=01-{MAC.replace(':', '-')}"

    proc = subprocess.run([sys.executable, "-m", "bty_live.commands.agent", "--cmdline", cmdline, "--no-reboot"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)

    assert proc.returncode == 0, proc.stderr
    assert "not rebooting (--no-reboot)" in proc.stderr
    assert device_equals_file(loop.path, raw_image)
    stored = server.store.last_receipt(MAC)
    assert stored is not None and stored.result == "ok"


# -- the token goes to the server only; downloads end ---------------------------------------------


class Mirror(http.server.ThreadingHTTPServer):
    """Another host that serves the image (a mirror, or an attacker's): it records what it is sent."""

    def __init__(self, image: Path) -> None:
        self.image = image
        self.headers_seen: list[dict[str, str]] = []
        super().__init__(("127.0.0.1", 0), MirrorHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    server: Mirror

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        data = self.server.image.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(ConnectionError):  # the agent probes the start, then streams
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass


@pytest.mark.parametrize("send_token", [False, True], ids=["no-instruction", "plan-says-send-token"])
def test_an_image_on_another_host_gets_the_token_only_when_the_plan_says_so_and_never_the_credential(
        server: ServerThread, tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice],
        monkeypatch: pytest.MonkeyPatch, send_token: bool) -> None:
    mirror = Mirror(raw_image)
    own_ref = ServedImage.ref
    monkeypatch.setattr(ServedImage, "ref", lambda self: replace(
        own_ref(self), url=f"{mirror.url}/images/{self.file_name}", send_token=send_token))
    loop = make_loop(IMAGE_SIZE)
    assign(server, tmp_path, "disk.img", f"path={loop.path}")

    outcome = run_agent(server.url, Recorder())

    assert outcome.state == AgentState.REBOOT and device_equals_file(loop.path, raw_image)
    assert mirror.headers_seen
    for sent in mirror.headers_seen:
        assert sent.get("authorization") == (f"Bearer {TOKEN}" if send_token else None)
        assert "x-bty-credential" not in sent
    mirror.shutdown()


def test_a_download_that_drops_after_every_few_bytes_gives_up_at_its_deadline_and_is_reported(
        server: ServerThread, tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    proxy = CutProxy(server.socket.getsockname()[:2], cut_every=4096)  # progress on every connection
    loop = make_loop(IMAGE_SIZE)
    run = assign(server, tmp_path, "disk.img", f"path={loop.path}")
    started = time.monotonic()

    outcome = run_agent(proxy.url, Recorder(), download_deadline=2.0)

    assert time.monotonic() - started < 60
    assert outcome.state == AgentState.WAIT and isinstance(outcome.failure, ImageFetchError)
    assert "did not finish within 2 s" in str(outcome.failure)
    assert len(proxy.seen) > 10 and not device_equals_file(loop.path, raw_image)
    plan = server.store.plan(MAC)
    assert plan is not None and plan.run_id == run and plan.state == "failed"
    assert "did not finish within 2 s" in plan.detail


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT], ids=lambda s: s.name)
def test_a_stop_signal_mid_write_wipes_reports_the_run_failed_and_exits_128_plus_n(
        server: ServerThread, tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice],
        signum: signal.Signals) -> None:
    proxy = CutProxy(server.socket.getsockname()[:2], rate=8 * MiB)  # 8 s of writing: time to stop it
    loop = make_loop(IMAGE_SIZE)
    run = assign(server, tmp_path, "disk.img", f"path={loop.path}")
    proc = subprocess.Popen([sys.executable, "-m", "bty_live.commands.agent", "--server", proxy.url,
                             "--token", TOKEN, "--mac", MAC, "--no-reboot"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while (machine := server.store.machine(MAC)) is None or machine.status != "writing":
            assert proc.poll() is None and time.monotonic() < deadline, "the agent never started writing"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and f"cancelled by {signum.name}" in stderr
    assert not device_equals_file(loop.path, raw_image)
    plan = server.store.plan(MAC)
    assert plan is not None and plan.run_id == run and plan.state == "failed"
    assert f"cancelled by {signum.name}" in plan.detail
    machine = server.store.machine(MAC)
    assert machine is not None and machine.status == "failed"


def test_the_operator_cancelling_a_run_mid_write_stops_the_agent_wipes_the_disk_and_it_waits_again(
        server: ServerThread, tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    proxy = CutProxy(server.socket.getsockname()[:2], rate=8 * MiB)  # 8 s of writing: time to cancel it
    loop = make_loop(IMAGE_SIZE)
    with open(loop.path, "r+b") as disk, open(raw_image, "rb") as old_system:  # the disk holds another system
        disk.write(old_system.read(MiB) + os.urandom(IMAGE_SIZE - MiB))  # (not this image: written whole)
    assert not looks_blank(loop.path, IMAGE_SIZE)
    run = assign(server, tmp_path, "disk.img", f"path={loop.path}")
    recorder = Recorder()
    outcome: list[AgentOutcome] = []
    agent = threading.Thread(target=lambda: outcome.append(run_agent(proxy.url, recorder, wait_limit=0.0)))
    agent.start()
    deadline = time.monotonic() + 60
    while (machine := server.store.machine(MAC)) is None or machine.status != "writing":
        assert agent.is_alive() and time.monotonic() < deadline, "the agent never started writing"
        time.sleep(0.05)
    cancelled = Deployments(server.store, tmp_path / "images").cancel(MAC)
    agent.join(timeout=60)

    assert cancelled.run_id == run and outcome and outcome[0].state == AgentState.WAIT, (outcome, recorder.lines)
    assert recorder.reboots == 0 and recorder.states.count(AgentState.FLASH) == 1
    assert any(f"run {run} was cancelled on the server" in line for line in recorder.lines), recorder.lines
    assert looks_blank(loop.path, IMAGE_SIZE), "the cancelled flash left partition-table signatures behind"
    assert server.store.plan(MAC) is None
    machine = server.store.machine(MAC)
    assert machine is not None and machine.status == "waiting", machine  # it asked again: no plan


def test_a_run_that_is_over_or_absent_has_nothing_to_cancel(server: ServerThread, tmp_path: Path) -> None:
    service = Deployments(server.store, tmp_path / "images")
    with pytest.raises(UsageError, match="has no plan to cancel"):
        service.cancel(MAC)
    assign(server, tmp_path, "disk.img", "path=/dev/null")
    assert service.cancel(MAC).state == "pending" and server.store.plan(MAC) is None


# -- refusals: nothing written -------------------------------------------------------------------


def test_a_wrong_token_is_refused_and_nothing_is_written(server: ServerThread, tmp_path: Path,
                                                         make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE, fill=b"\xa5")
    before = device_digest(loop, IMAGE_SIZE)
    assign(server, tmp_path, "disk.img.zst", f"path={loop.path}")
    state = server.store.dump()

    with pytest.raises(TokenRefusedError, match=r"refused the token \(403\); check bty.token="):
        run_agent(server.url, Recorder(), token="wrong-token-0123456789")
    proc = subprocess.run([sys.executable, "-m", "bty_live.commands.agent", "--server", server.url,
                           "--token", "wrong-token-0123456789", "--mac", MAC, "--no-reboot"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)

    assert proc.returncode == 14 and "refused the token" in proc.stderr
    assert device_digest(loop, IMAGE_SIZE) == before
    assert server.store.dump() == state


def test_a_refused_disk_is_reported_nothing_is_written_and_the_agent_waits(
        server: ServerThread, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE // 2, fill=b"\x5a")  # too small for the image
    before = device_digest(loop, IMAGE_SIZE // 2)
    run = assign(server, tmp_path, "disk.img.zst", loop.path)  # a device, not a selector: refused, not unmatched
    recorder = Recorder()

    outcome = run_agent(server.url, recorder, wait_limit=0.0)

    assert outcome.state == AgentState.WAIT and isinstance(outcome.failure, TargetRefusedError)
    assert exit_code_for(outcome.failure) == 7 and recorder.reboots == 0
    assert device_digest(loop, IMAGE_SIZE // 2) == before
    plan = server.store.plan(MAC)
    assert plan is not None and plan.state == "failed" and "too small" in plan.detail
    machine = server.store.machine(MAC)
    assert machine is not None and machine.status == "failed"
    errors = [e.event for e in server.store.events(MAC, run) if e.event["kind"] == "error"]
    assert len(errors) == 1 and errors[0]["error"] == "refused"
    assert server.store.last_receipt(MAC) is None


def test_a_digest_mismatch_wipes_the_disk_and_the_server_ledger_records_the_failed_run(
        server: ServerThread, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    manifest = tmp_path / "images" / "disk.img.zst.toml"
    text = manifest.read_text()
    good = text.split('blake3 = "')[1][:64]
    manifest.write_text(text.replace(good, "0" * 64))  # the server now promises another digest
    loop = make_loop(IMAGE_SIZE, fill=b"\x5a")
    run = assign(server, tmp_path, "disk.img.zst", f"path={loop.path}")

    outcome = run_agent(server.url, Recorder(), wait_limit=0.0)

    assert outcome.failure is not None and exit_code_for(outcome.failure) == 5
    assert looks_blank(loop.path, IMAGE_SIZE)  # written, found wrong, wiped by the engine
    plan = server.store.plan(MAC)
    assert plan is not None and plan.run_id == run and plan.state == "failed"
    assert "does not match its manifest" in plan.detail
    [record] = read_ledger(tmp_path / "images" / "ledger.jsonl").records
    assert record.result == "failed" and record.error_kind == "digest" and not record.known_good
    assert server.store.last_receipt(MAC) is None


# -- the conversation ----------------------------------------------------------------------------


def test_the_agent_waits_for_a_plan_and_flashes_once_one_is_assigned(
        server: ServerThread, tmp_path: Path, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    recorder = Recorder()

    def assign_on_first_wait(state: AgentState, plan: AgentPlan | None) -> None:
        recorder.states.append(state)
        if state == AgentState.WAIT and recorder.states.count(AgentState.WAIT) == 1:
            assert plan is not None and "no plan" in plan.message
            assign(server, tmp_path, "disk.img.zst", f"path={loop.path}")

    outcome = run_agent(server.url, recorder, wait_limit=None, on_state=assign_on_first_wait)

    assert outcome.state == AgentState.REBOOT
    assert recorder.states[:5] == [AgentState.INVENTORY, AgentState.ASK, AgentState.WAIT, AgentState.ASK,
                                   AgentState.FLASH]
    assert device_equals_file(loop.path, raw_image)


def test_a_plan_may_name_an_image_on_another_host_the_agent_streams_it_from_there(
        server: ServerThread, tmp_path: Path, raw_image: Path, zst_image: Path,
        make_loop: Callable[..., LoopDevice]) -> None:
    store = tmp_path / "bucket"
    store.mkdir()
    os.link(zst_image, store / "disk.img.zst")
    assert cli.main(["images", "add", str(store / "disk.img.zst")]) == 0  # URL.toml beside it
    loop = make_loop(IMAGE_SIZE)
    with serving_files(store) as bucket:
        url = f"{bucket.url}/images/disk.img.zst"
        plan = Deployments(server.store, tmp_path / "images").assign(MAC, Action.FLASH, image=url,
                                                                     disk=f"path={loop.path}")
        outcome = run_agent(server.url, Recorder())
    assert plan.image_size == IMAGE_SIZE and plan.image_blake3  # read from URL.toml at assign
    assert outcome.state == AgentState.REBOOT and device_equals_file(loop.path, raw_image)
    assert any(r.startswith("/images/disk.img.zst") and not r.endswith(".toml") for r in bucket.requests)
    assert set(bucket.authorizations) == {None}, "the server's token went to another host"
    stored = server.store.last_receipt(MAC)
    assert stored is not None and stored.result == "ok" and stored.receipt["stream_check"] == "match"


def test_a_presigned_url_plan_needs_blake3_and_its_query_string_is_never_listed(
        server: ServerThread, tmp_path: Path, raw_image: Path, zst_image: Path,
        make_loop: Callable[..., LoopDevice], capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "bucket"
    store.mkdir()
    os.link(zst_image, store / "disk.img.zst")
    digest = blake3.blake3(raw_image.read_bytes()).hexdigest()
    loop = make_loop(IMAGE_SIZE)
    service = Deployments(server.store, tmp_path / "images")
    with serving_files(store, require_query="X-Amz-Signature=SECRET") as bucket:
        url = f"{bucket.url}/images/disk.img.zst?X-Amz-Signature=SECRET"
        with pytest.raises(ImageError, match="--blake3"):
            service.assign(MAC, Action.FLASH, image=url, disk=f"path={loop.path}")  # no URL.toml to read
        service.assign(MAC, Action.FLASH, image=url, disk=f"path={loop.path}", blake3=digest)
        listed = json.dumps(service.overview())
        outcome = run_agent(server.url, Recorder())
    assert outcome.state == AgentState.REBOOT and device_equals_file(loop.path, raw_image)
    assert "SECRET" not in listed and "disk.img.zst" in listed
    stored = server.store.last_receipt(MAC)
    assert stored is not None and stored.result == "ok" and "SECRET" not in json.dumps(stored.receipt)
    assert stored.receipt["stream_check"] == "match"  # against --blake3, the size learnt on the way
    assert serve.main(["machines", "--state", str(tmp_path / "state")]) == 0
    assert "SECRET" not in capsys.readouterr().out


def test_a_finished_machine_boots_its_local_disk_without_flashing_again(
        server: ServerThread, tmp_path: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    run = assign(server, tmp_path, "disk.img.zst", f"path={loop.path}")
    plan = server.store.plan(MAC)
    assert plan is not None and plan.image_blake3 is not None
    Deployments(server.store, None).receipt(MAC, run, {"result": "ok", "image_name": "disk",
                                                       "image_blake3": plan.image_blake3})
    recorder = Recorder()

    outcome = run_agent(server.url, recorder)

    assert outcome.state == AgentState.REBOOT and recorder.reboots == 1 and outcome.receipt is None
    assert AgentState.FLASH not in recorder.states
    assert device_digest(loop, MiB) == hashlib.sha256(bytes(MiB)).hexdigest()


def test_inventory_lists_disks_with_ids_and_eligibility(make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    inventory = collect_inventory(MAC)
    [disk] = [d for d in inventory["disks"] if d["path"] == loop.path]
    assert disk["size"] == IMAGE_SIZE and disk["transport"] == "loop" and disk["eligible"] is True
    assert inventory["mac"] == MAC and "model" in inventory["machine"]
    root = [d for d in inventory["disks"] if not d["eligible"]]
    assert all(d["reasons"] for d in root)


# -- the event uplink (no root needed) -----------------------------------------------------------


class SlowServer:
    """A post() that blocks until released, recording every batch it was given."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[dict[str, Any]]] = []

    def __call__(self, events: list[dict[str, Any]]) -> None:
        self.entered.set()
        self.release.wait()
        self.batches.append(events)


def test_uplink_never_blocks_the_flash_and_merges_progress_while_the_server_is_slow() -> None:
    server = SlowServer()
    uplink = EventUplink(server, interval=0.0)
    uplink(Event(Phase.WRITE, Kind.START, total=100))
    assert server.entered.wait(30)  # the sender is now stuck in a post

    for i in range(10_000):  # would block (or grow without bound) if the sink waited for the server
        uplink(Event(Phase.WRITE, Kind.PROGRESS, bytes_out=i, total=10_000))
    uplink(Event(Phase.WRITE, Kind.END, bytes_out=10_000, total=10_000))
    uplink(Event(Phase.VERIFY, Kind.PROGRESS, bytes_out=5))
    uplink(Event(Phase.FAILED, Kind.ERROR, message="boom"))
    server.release.set()
    stats = uplink.close()

    sent = [Event.from_dict(e) for batch in server.batches for e in batch]
    assert [(e.phase, e.kind) for e in sent] == [
        (Phase.WRITE, Kind.START), (Phase.WRITE, Kind.PROGRESS), (Phase.WRITE, Kind.END),
        (Phase.VERIFY, Kind.PROGRESS), (Phase.FAILED, Kind.ERROR)]
    assert sent[1].bytes_out == 9_999  # the newest progress survived the merge
    assert stats.merged == 9_999 and stats.sent == 5 and stats.lost == 0


def test_uplink_retries_an_unreachable_server_and_keeps_start_end_and_error() -> None:
    failures = iter([True, True, False, False, False])
    batches: list[list[dict[str, Any]]] = []

    def flaky(events: list[dict[str, Any]]) -> None:
        if next(failures, False):
            raise ServerUnavailableError("server http://x cannot be reached (connection refused)")
        batches.append(events)

    uplink = EventUplink(flaky, interval=0.0, backoff=Backoff(attempts=100, first=0.0))
    uplink(Event(Phase.WRITE, Kind.START))
    uplink(Event(Phase.WRITE, Kind.END))
    uplink(Event(Phase.FAILED, Kind.ERROR, message="boom"))
    stats = uplink.close()

    kinds = [e["kind"] for batch in batches for e in batch]
    assert kinds == ["start", "end", "error"] and stats.retries == 2 and stats.lost == 0


def test_uplink_close_gives_up_when_the_server_stays_away() -> None:
    def away(_events: list[dict[str, Any]]) -> None:
        raise ServerUnavailableError("server http://x cannot be reached (connection refused)")

    uplink = EventUplink(away, interval=0.0, backoff=Backoff(attempts=100, first=0.0))
    uplink(Event(Phase.DONE, Kind.END))
    stats = uplink.close(timeout=0.0)
    assert stats.lost == 1 and stats.sent == 0 and "connection refused" in stats.last_error
