"""The broker's one SQLite journal: sessions, usage and batch jobs, so a restart loses no usage record and still lists
its jobs."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from gpucell.broker.private_files import private_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    session TEXT NOT NULL,
    pool TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    seconds REAL NOT NULL,
    cost REAL NOT NULL,
    closed INTEGER NOT NULL,      -- 0: a still-assigned worker's interval up to the last checkpoint
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owners (kind TEXT NOT NULL, id TEXT NOT NULL, owner TEXT NOT NULL, PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, notebook TEXT, state TEXT, hardware TEXT, submitted REAL, started REAL,
    finished REAL, cost REAL, error TEXT, dir TEXT, pid INTEGER, session_name TEXT);
"""
# The jobs table's columns, in the order of gpucell.broker.jobs.Job's fields.
JOB_COLUMNS = ("id", "notebook", "state", "hardware", "submitted", "started", "finished", "cost", "error", "dir", "pid",
               "session_name")


class Journal:
    """Small synchronous writes (WAL, no fsync per row): cheap enough for the broker's event loop.

    Sessions and usage go through one connection on the loop's thread; the job methods are blocking and open their
    own connection, so JobManager calls them through a thread and the loop never waits on disk.
    """

    def __init__(self, path: str) -> None:
        private_file(path)   # 0600 in a 0700 directory, before SQLite makes it (and its -wal, -shm) 0644
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        # Intervals left open by a broker that died: their last checkpoint is the best record there is.
        self._db.execute("UPDATE usage SET closed = 1 WHERE closed = 0")

    def record_usage(self, session: str, pool: str, worker_id: str, seconds: float, price_per_hour: float) -> None:
        with self._db:
            self._db.execute("DELETE FROM usage WHERE closed = 0 AND worker_id = ?", (worker_id,))
            self._db.execute("INSERT INTO usage (session, pool, worker_id, seconds, cost, closed, at) "
                             "VALUES (?, ?, ?, ?, ?, 1, ?)",
                             (session, pool, worker_id, seconds, seconds * price_per_hour / 3600.0, time.time()))

    def checkpoint_open(self, intervals: list[tuple[str, str, str, float, float]]) -> None:
        with self._db:
            self._db.execute("DELETE FROM usage WHERE closed = 0")
            self._db.executemany(
                "INSERT INTO usage (session, pool, worker_id, seconds, cost, closed, at) VALUES (?, ?, ?, ?, ?, 0, ?)",
                [(s, p, w, sec, sec * price / 3600.0, time.time()) for s, p, w, sec, price in intervals])

    def usage_totals(self, include_open: bool = False) -> dict[tuple[str, str], float]:
        query = "SELECT session, pool, SUM(seconds) FROM usage" + ("" if include_open else " WHERE closed = 1")
        return {(s, p): total for s, p, total in self._db.execute(query + " GROUP BY session, pool")}

    def record_session(self, session: str, name: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO sessions (id, name) VALUES (?, ?)", (session, name))

    def session_names(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT id, name FROM sessions"))

    def record_owner(self, kind: str, key: str, owner: str) -> None:
        """The user a session or job belongs to (gpucell.broker.owners), kept across restarts."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO owners (kind, id, owner) VALUES (?, ?, ?)", (kind, key, owner))

    def owners(self) -> dict[tuple[str, str], str]:
        return {(kind, key): owner for kind, key, owner in self._db.execute("SELECT kind, id, owner FROM owners")}

    def _connect(self) -> sqlite3.Connection:
        # The loop's connection may hold the file: wait for its locks rather than fail.
        return sqlite3.connect(self.path, timeout=30)

    def put_job(self, row: Sequence[Any]) -> None:
        """Insert or replace one job: its values in JOB_COLUMNS order."""
        with self._connect() as db:
            db.execute(f"INSERT OR REPLACE INTO jobs ({', '.join(JOB_COLUMNS)}) "
                       f"VALUES ({', '.join('?' * len(JOB_COLUMNS))})", list(row))

    def jobs(self) -> list[tuple[Any, ...]]:
        """Every job, oldest first, as rows in JOB_COLUMNS order."""
        with self._connect() as db:
            return db.execute(f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs ORDER BY submitted").fetchall()

    def mark_jobs_interrupted(self, now: float) -> None:
        """Jobs the previous broker was running died with it (their runner dies with its broker)."""
        with self._connect() as db:
            db.execute("UPDATE jobs SET state = 'interrupted', finished = ?, "
                       "error = 'the broker stopped while the job ran; gpucell fetch it and gpucell run --resume it' "
                       "WHERE state NOT IN ('succeeded', 'failed', 'cancelled', 'interrupted')", (now,))

    def close(self) -> None:
        self._db.close()
