"""The server's state in SQLite (stdlib sqlite3): machines, plans, events, receipts.

One file, `bty-serve.sqlite3`, in the --state directory, in WAL mode so `bty serve machines`
and `bty serve assign` work beside a running server. A `schema_version` table says which
layout the file has; newer layouts are refused, older ones are migrated forward on open.
Machines' credentials are stored only as hashes. This module only stores and fetches: what a
receipt or an event *means* is `service.py`'s job.
The known-good ledger is not here: it is the project's ledger.jsonl (bty_live.flash.ledger), which the
server appends the agents' records to, so `bty ledger` and `bty images` read it as on a stick.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from bty_live.errors import StateError
from bty_live.image.remote import is_image_url
from bty_live.protocol.httpconn import shown_url
from bty_live.protocol.wire import Action

DB_NAME = "bty-serve.sqlite3"

#: each entry migrates version i to i + 1
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE machines (
        mac TEXT PRIMARY KEY,
        model TEXT NOT NULL DEFAULT '',
        inventory TEXT NOT NULL DEFAULT '{}',
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'new',
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE plans (
        mac TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        action TEXT NOT NULL,
        image TEXT,
        disk TEXT,
        verify TEXT NOT NULL DEFAULT 'readback',
        tune TEXT,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        mac TEXT NOT NULL,
        run_id TEXT NOT NULL,
        received_at REAL NOT NULL,
        event TEXT NOT NULL
    );
    CREATE INDEX events_by_run ON events (mac, run_id, id);
    CREATE TABLE receipts (
        id INTEGER PRIMARY KEY,
        mac TEXT NOT NULL,
        run_id TEXT NOT NULL,
        received_at REAL NOT NULL,
        result TEXT NOT NULL,
        image_name TEXT NOT NULL,
        image_blake3 TEXT NOT NULL,
        receipt TEXT NOT NULL
    );
    CREATE INDEX receipts_by_mac ON receipts (mac, id);
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 1 -> 2: per-machine credentials (only a hash), the assigned image's digest
    """
    CREATE TABLE credentials (
        mac TEXT PRIMARY KEY,
        hash TEXT,
        issued_at REAL,
        enrol_open INTEGER NOT NULL DEFAULT 1
    );
    ALTER TABLE plans ADD COLUMN image_blake3 TEXT;
    """,
    # 2 -> 3: an image given by URL: its decompressed size (from URL.toml), when known
    """
    ALTER TABLE plans ADD COLUMN image_size INTEGER;
    """,
)
#: events kept per run (the newest); a run's events beyond this replace its oldest ones
MAX_EVENTS_PER_RUN = 5000
#: runs per machine whose events are kept (the newest); older runs' events go at `assign`
KEPT_RUNS = 3
SCHEMA_VERSION = len(MIGRATIONS)


class PlanState(StrEnum):
    PENDING = "pending"  # assigned, not started
    RUNNING = "running"  # the agent reported the first event of this run
    DONE = "done"  # receipt received, result ok
    FAILED = "failed"  # the agent reported an error


@dataclass(frozen=True)
class PlanRecord:
    mac: str
    run_id: str
    action: Action
    image: str | None
    disk: str | None
    verify: str
    tune: str | None
    state: PlanState
    detail: str
    created_at: float
    updated_at: float
    #: the assigned image's blake3 (from its manifest at `assign`): what the receipt must name
    image_blake3: str | None = None
    #: an image given by URL: its decompressed size, when its manifest said it (None: unknown)
    image_size: int | None = None

    @property
    def shown_image(self) -> str | None:
        """The image for listings and pages: a URL without its query string (a presigned URL's
        credentials are for the agent's request only)."""
        return shown_url(self.image) if self.image and is_image_url(self.image) else self.image

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "action": self.action.value, "image": self.shown_image,
                "image_blake3": self.image_blake3, "disk": self.disk,
                "verify": self.verify, "tune": self.tune, "state": self.state.value, "detail": self.detail,
                "created_at": self.created_at, "updated_at": self.updated_at}


@dataclass(frozen=True)
class MachineRecord:
    mac: str
    model: str
    inventory: dict[str, Any]
    first_seen: float
    last_seen: float
    status: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"mac": self.mac, "model": self.model, "first_seen": self.first_seen, "last_seen": self.last_seen,
                "status": self.status, "detail": self.detail, "inventory": self.inventory}


@dataclass(frozen=True)
class ReceiptRecord:
    id: int
    mac: str
    run_id: str
    received_at: float
    result: str
    image_name: str
    image_blake3: str
    receipt: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "mac": self.mac, "run_id": self.run_id, "received_at": self.received_at,
                "result": self.result, "image_name": self.image_name, "image_blake3": self.image_blake3,
                "receipt": self.receipt}


@dataclass(frozen=True)
class StoredEvent:
    id: int
    run_id: str
    received_at: float
    event: dict[str, Any]


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class Store:
    """The state database. Thread-safe: one connection, one lock, short transactions."""

    def __init__(self, directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.path = directory / DB_NAME
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"state directory {directory} cannot be used ({exc}); give a writable --state DIR") \
                from exc
        self._lock = threading.RLock()
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work; everything in it commits together or not at all."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise StateError(f"state {self.path} has schema version {version}, newer than this bty "
                                 f"understands ({SCHEMA_VERSION}); upgrade bty-live")
            for script in MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            else:
                db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT version FROM schema_version").fetchone()[0])

    # -- settings ------------------------------------------------------------------------------

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO settings (key, value) VALUES (?, ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def setting(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    # -- machines ------------------------------------------------------------------------------

    def record_inventory(self, mac: str, model: str, inventory: dict[str, Any], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute(
                "INSERT INTO machines (mac, model, inventory, first_seen, last_seen) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (mac) DO UPDATE SET model = excluded.model, inventory = excluded.inventory, "
                "last_seen = excluded.last_seen",
                (mac, model, json.dumps(inventory, allow_nan=False), now, now),
            )

    def set_status(self, db: sqlite3.Connection, mac: str, status: str, detail: str, now: float) -> None:
        """Inside a transaction: the machine's status line (creating the machine if needed)."""
        db.execute(
            "INSERT INTO machines (mac, first_seen, last_seen, status, detail) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (mac) DO UPDATE SET status = excluded.status, detail = excluded.detail, "
            "last_seen = excluded.last_seen",
            (mac, now, now, status, detail),
        )

    def update_status(self, mac: str, status: str, detail: str = "", now: float | None = None) -> None:
        with self.transaction() as db:
            self.set_status(db, mac, status, detail, time.time() if now is None else now)

    def touch_status(self, mac: str, status: str, detail: str = "", now: float | None = None) -> None:
        """The status line of a machine that is known; an unknown MAC gets no row."""
        with self.transaction() as db:
            db.execute("UPDATE machines SET status = ?, detail = ?, last_seen = ? WHERE mac = ?",
                       (status, detail, time.time() if now is None else now, mac))

    def machine(self, mac: str) -> MachineRecord | None:
        with self._lock:
            row = self._db.execute("SELECT mac, model, inventory, first_seen, last_seen, status, detail "
                                   "FROM machines WHERE mac = ?", (mac,)).fetchone()
        return _machine(row) if row else None

    def machines(self) -> list[MachineRecord]:
        with self._lock:
            rows = self._db.execute("SELECT mac, model, inventory, first_seen, last_seen, status, detail "
                                    "FROM machines ORDER BY mac").fetchall()
        return [_machine(row) for row in rows]

    # -- plans ---------------------------------------------------------------------------------

    def assign(self, mac: str, action: Action, *, image: str | None = None, disk: str | None = None,
               verify: str = "readback", tune: str | None = None, status: str = "assigned",
               image_blake3: str | None = None, image_size: int | None = None,
               now: float | None = None) -> PlanRecord:
        """A new plan (with a new run id) for `mac`, replacing any earlier one. The machine may
        enrol once more (it reboots into the netboot system to carry the plan out), and the
        events of its older runs but the last few are dropped."""
        now = time.time() if now is None else now
        record = PlanRecord(mac=mac, run_id=new_run_id(), action=action, image=image, disk=disk, verify=verify,
                            tune=tune, state=PlanState.PENDING, detail="", created_at=now, updated_at=now,
                            image_blake3=image_blake3, image_size=image_size)
        with self.transaction() as db:
            db.execute(
                "INSERT INTO plans (mac, run_id, action, image, disk, verify, tune, state, detail, created_at, "
                "updated_at, image_blake3, image_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (mac) DO UPDATE "
                "SET run_id = excluded.run_id, action = excluded.action, image = excluded.image, "
                "disk = excluded.disk, verify = excluded.verify, tune = excluded.tune, state = excluded.state, "
                "detail = excluded.detail, created_at = excluded.created_at, updated_at = excluded.updated_at, "
                "image_blake3 = excluded.image_blake3, image_size = excluded.image_size",
                (mac, record.run_id, action.value, image, disk, verify, tune, record.state.value, "", now, now,
                 image_blake3, image_size),
            )
            self.set_status(db, mac, status, _plan_line(record), now)
            self._open_enrolment(db, mac)
            db.execute("DELETE FROM events WHERE mac = ? AND run_id NOT IN (SELECT run_id FROM events WHERE mac = ? "
                       "GROUP BY run_id ORDER BY MAX(id) DESC LIMIT ?)", (mac, mac, KEPT_RUNS - 1))
        return record

    def cancel(self, mac: str, now: float | None = None) -> PlanRecord | None:
        """Take `mac`'s plan away (the plan it had, None if it had none). The machine then waits
        for a new one; whatever its agent still reports about the old run is refused (409), which
        tells a running agent to stop."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            row = db.execute("SELECT mac, run_id, action, image, disk, verify, tune, state, detail, created_at, "
                             "updated_at, image_blake3, image_size FROM plans WHERE mac = ?", (mac,)).fetchone()
            if row is None:
                return None
            plan = _plan(row)
            db.execute("DELETE FROM plans WHERE mac = ?", (mac,))
            self.set_status(db, mac, "cancelled", f"run {plan.run_id} cancelled by the operator; waiting for a "
                                                  "new plan", now)
        return plan

    def plan(self, mac: str) -> PlanRecord | None:
        with self._lock:
            row = self._db.execute("SELECT mac, run_id, action, image, disk, verify, tune, state, detail, "
                                   "created_at, updated_at, image_blake3, image_size FROM plans WHERE mac = ?",
                                   (mac,)).fetchone()
        return _plan(row) if row else None

    # -- credentials ---------------------------------------------------------------------------

    def credential_hash(self, mac: str) -> str | None:
        """The stored hash of `mac`'s credential; None while it has none."""
        with self._lock:
            row = self._db.execute("SELECT hash FROM credentials WHERE mac = ?", (mac,)).fetchone()
        return str(row[0]) if row and row[0] else None

    def enrol(self, mac: str, credential_hash: str, now: float | None = None) -> bool:
        """Store the hash of `mac`'s new credential, if the machine may enrol now: it never did, or
        its enrolment was opened again (`assign`, `reset`) and not used since. False otherwise."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            row = db.execute("SELECT enrol_open FROM credentials WHERE mac = ?", (mac,)).fetchone()
            if row is not None and not row[0]:
                return False
            db.execute("INSERT INTO credentials (mac, hash, issued_at, enrol_open) VALUES (?, ?, ?, 0) "
                       "ON CONFLICT (mac) DO UPDATE SET hash = excluded.hash, issued_at = excluded.issued_at, "
                       "enrol_open = 0", (mac, credential_hash, now))
        return True

    def reset_credential(self, mac: str) -> None:
        """Forget `mac`'s credential and let it enrol again (the operator's `bty serve reset`)."""
        with self.transaction() as db:
            db.execute("INSERT INTO credentials (mac, hash, issued_at, enrol_open) VALUES (?, NULL, NULL, 1) "
                       "ON CONFLICT (mac) DO UPDATE SET hash = NULL, issued_at = NULL, enrol_open = 1", (mac,))

    @staticmethod
    def _open_enrolment(db: sqlite3.Connection, mac: str) -> None:
        db.execute("UPDATE credentials SET enrol_open = 1 WHERE mac = ?", (mac,))

    def set_plan_state(self, db: sqlite3.Connection, mac: str, run_id: str, state: PlanState, detail: str,
                       now: float) -> bool:
        """Inside a transaction: move the plan of run `run_id` on; False if that run is not current."""
        cursor = db.execute("UPDATE plans SET state = ?, detail = ?, updated_at = ? WHERE mac = ? AND run_id = ?",
                            (state.value, detail, now, mac, run_id))
        return cursor.rowcount > 0

    # -- events --------------------------------------------------------------------------------

    def add_events(self, db: sqlite3.Connection, mac: str, run_id: str, events: list[dict[str, Any]],
                   now: float) -> None:
        """Inside a transaction: store `events`; a run keeps only its newest MAX_EVENTS_PER_RUN."""
        db.executemany("INSERT INTO events (mac, run_id, received_at, event) VALUES (?, ?, ?, ?)",
                       [(mac, run_id, now, json.dumps(e, separators=(",", ":"), allow_nan=False)) for e in events])
        db.execute("DELETE FROM events WHERE mac = ? AND run_id = ? AND id <= (SELECT id FROM events WHERE mac = ? "
                   "AND run_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)", (mac, run_id, mac, run_id, MAX_EVENTS_PER_RUN))

    def events(self, mac: str, run_id: str | None = None, after: int = 0, limit: int = 1000) -> list[StoredEvent]:
        query = "SELECT id, run_id, received_at, event FROM events WHERE mac = ? AND id > ?"
        args: list[Any] = [mac, after]
        if run_id is not None:
            query += " AND run_id = ?"
            args.append(run_id)
        query += " ORDER BY id LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [StoredEvent(id=r[0], run_id=r[1], received_at=r[2], event=json.loads(r[3])) for r in rows]

    def last_event_id(self) -> int:
        """The newest stored event's id (0 when there is none): where a live view starts."""
        with self._lock:
            row = self._db.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)

    def last_progress(self, mac: str, run_id: str, window: int = 64) -> StoredEvent | None:
        """The newest of a run's last `window` events that carries bytes and a total (what a
        progress bar shows); None before the first one."""
        with self._lock:
            rows = self._db.execute("SELECT id, run_id, received_at, event FROM events WHERE mac = ? AND run_id = ? "
                                    "ORDER BY id DESC LIMIT ?", (mac, run_id, window)).fetchall()
        for row in rows:
            event = json.loads(row[3])
            if isinstance(event, dict) and event.get("total"):
                return StoredEvent(id=row[0], run_id=row[1], received_at=row[2], event=event)
        return None

    def macs_with_events_after(self, after: int) -> list[str]:
        """Machines that reported an event with an id above `after` (what a live view redraws)."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT mac FROM events WHERE id > ?", (after,)).fetchall()
        return sorted(r[0] for r in rows)

    # -- receipts ---------------------------------------------------------------

    def add_receipt(self, db: sqlite3.Connection, mac: str, run_id: str, receipt: dict[str, Any],
                    now: float) -> int:
        cursor = db.execute(
            "INSERT INTO receipts (mac, run_id, received_at, result, image_name, image_blake3, receipt) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (mac, run_id, now, str(receipt.get("result", "")), str(receipt.get("image_name", "")),
             str(receipt.get("image_blake3", "")), json.dumps(receipt, allow_nan=False)),
        )
        return int(cursor.lastrowid or 0)

    def receipts(self, mac: str | None = None, limit: int = 100) -> list[ReceiptRecord]:
        query = "SELECT id, mac, run_id, received_at, result, image_name, image_blake3, receipt FROM receipts"
        args: list[Any] = []
        if mac is not None:
            query += " WHERE mac = ?"
            args.append(mac)
        query += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [ReceiptRecord(id=r[0], mac=r[1], run_id=r[2], received_at=r[3], result=r[4], image_name=r[5],
                              image_blake3=r[6], receipt=json.loads(r[7])) for r in rows]

    def last_receipt(self, mac: str) -> ReceiptRecord | None:
        found = self.receipts(mac, limit=1)
        return found[0] if found else None

    def dump(self) -> list[str]:
        """Every row of every table, as SQL: lets tests prove a refused request changed nothing."""
        with self._lock:
            return list(self._db.iterdump())


def _machine(row: tuple[Any, ...]) -> MachineRecord:
    return MachineRecord(mac=row[0], model=row[1], inventory=json.loads(row[2]), first_seen=row[3],
                         last_seen=row[4], status=row[5], detail=row[6])


def _plan(row: tuple[Any, ...]) -> PlanRecord:
    return PlanRecord(mac=row[0], run_id=row[1], action=Action(row[2]), image=row[3], disk=row[4], verify=row[5],
                      tune=row[6], state=PlanState(row[7]), detail=row[8], created_at=row[9], updated_at=row[10],
                      image_blake3=row[11], image_size=row[12])


def _plan_line(plan: PlanRecord) -> str:
    if plan.action == Action.FLASH:
        return f"flash {plan.shown_image} onto {plan.disk} (run {plan.run_id})"
    return f"{plan.action.value} (run {plan.run_id})"
