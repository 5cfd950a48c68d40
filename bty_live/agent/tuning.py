"""Post-flash tuning for the agent: the seam where the engine's tuning plugs in.

The engine tunes the flashed disk itself (bty_live.tune, after the fix-ups) when the plan's
FlashOptions.tune names a task file it can read. The agent has no images directory: the task
lives on the server. Until the server offers tasks for download, the agent turns tuning off
and says so, and the ledger records the run without a task.

# ---------------------------------------------------------------------------------------------
# SEAM(tuning): to tune netbooted machines,
#   1. the server offers tasks and their CIJOE configs for download, like images (a
#      /tasks/{file} route behind the token); the plan's `tune` names the task (the server
#      already resolved "the manifest's [tune] task"; None: no tuning) and, in a new field,
#      its config;
#   2. `tuning_option` downloads both into the run's `workdir` (HttpSource, same token) and
#      returns the task's local path: prepare_plan_for() then builds the TuneRequest, the engine
#      runs it with the same sink (Phase.TUNE events reach the server), the receipt carries
#      TuneResult.to_dict(), and the ledger record the task and its digest;
#   3. a failing step raises TuneError (exit 13) out of engine.flash: the agent reports it like
#      any other failure, and the server's ledger records the failed run.
# The plan's `tune` field already travels server -> agent unchanged (protocol.AgentPlan.tune).
# ---------------------------------------------------------------------------------------------
"""

from __future__ import annotations

from pathlib import Path

from bty_live.events import Event, EventSink, Kind, Phase

OFF = "off"


def tuning_option(tune: str | None, workdir: Path, sink: EventSink) -> str:
    """The FlashOptions.tune value for a plan's `tune`: "off" (or, later, a task file in `workdir`)."""
    if tune not in (None, OFF):
        sink(Event(Phase.TUNE, Kind.INFO, message=f"tuning task {tune} requested, but netbooted machines cannot "
                                                  "fetch tasks from the server yet: skipped"))
    return OFF
