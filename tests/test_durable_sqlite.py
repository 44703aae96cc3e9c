"""``transact_here``: inserts on the loop's thread, only the COMMIT in SQLite's (the outbox's
group commit), on a real SQLite file: where each statement runs, a busy file, a failed COMMIT,
a cancelled writer."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path

import aiosqlite
import pytest

from gateway.durable_sqlite import _busy, open_durable, read_here, transact_here
from gateway.outbox import NewEnvelope, Outbox
from gateway.outbox.store import Item


class _Error(Exception):
    pass


async def _open(path: Path) -> aiosqlite.Connection:
    db = await open_durable(path, error=_Error, shared=True)
    await db.execute("CREATE TABLE IF NOT EXISTS t(x INTEGER)")
    return db


def _item(body: bytes = b"{}") -> Item:
    """One reading for the outbox, with one envelope for ``record``."""
    envelope = NewEnvelope(destination="record", idem_key="k", body=body)
    return (
        "r1",
        "DEV",
        "weight",
        "vital-signs",
        "s|p",
        "2026-11-25T08:00:00+00:00",
        b"{}",
        [envelope],
    )


def _rows(path: Path) -> list[int]:
    other = sqlite3.connect(path)
    try:
        return [row[0] for row in other.execute("SELECT x FROM t ORDER BY x")]
    finally:
        other.close()


async def test_only_the_commit_leaves_the_event_loops_thread(tmp_path: Path) -> None:
    db = await _open(tmp_path / "d.sqlite")
    seen: list[tuple[str, int]] = []
    db._conn.set_trace_callback(lambda sql: seen.append((sql, threading.get_ident())))
    try:
        await transact_here(
            db, lambda conn: conn.execute("INSERT INTO t VALUES (1)"), busy_timeout=5
        )
    finally:
        db._conn.set_trace_callback(None)
        await db.close()
    here = threading.get_ident()
    where = {sql: thread for sql, thread in seen if not sql.startswith("PRAGMA")}
    assert where["BEGIN IMMEDIATE"] == here and where["INSERT INTO t VALUES (1)"] == here
    assert where["COMMIT"] != here  # the fsync waits beside the loop, not on it
    assert _rows(tmp_path / "d.sqlite") == [1]


async def test_a_file_another_process_writes_is_waited_for_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.sqlite"
    db = await _open(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        write = asyncio.create_task(
            transact_here(db, lambda conn: conn.execute("INSERT INTO t VALUES (2)"), busy_timeout=5)
        )
        loop = asyncio.get_running_loop()
        gaps = []
        for _ in range(20):  # the loop keeps running while the write waits for the lock
            before = loop.time()
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - before)
        assert not write.done() and max(gaps) < 1.0  # not stuck in a 5 s busy wait
        other.execute("COMMIT")
        await asyncio.wait_for(write, 5)
    finally:
        other.close()
        await db.close()
    assert _rows(path) == [2]


async def test_a_commit_that_fails_is_rolled_back_and_the_connection_stays_usable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.sqlite"
    db = await _open(path)
    await db.execute("CREATE TABLE parent(id INTEGER PRIMARY KEY)")
    await db.execute(
        "CREATE TABLE child(parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )

    def orphan(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (3)")
        conn.execute("INSERT INTO child VALUES (99)")  # caught only at COMMIT (deferred)

    try:
        with pytest.raises(sqlite3.IntegrityError):
            await transact_here(db, orphan, busy_timeout=5)
        assert not db._conn.in_transaction
        await transact_here(
            db, lambda conn: conn.execute("INSERT INTO t VALUES (4)"), busy_timeout=5
        )
    finally:
        await db.close()
    assert _rows(path) == [4]  # the failed transaction left nothing


async def test_a_writer_cancelled_during_its_commit_waits_for_it_to_end(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    db = await _open(path)
    try:
        write = asyncio.create_task(
            transact_here(db, lambda conn: conn.execute("INSERT INTO t VALUES (5)"), busy_timeout=5)
        )
        await asyncio.sleep(0)  # the task ran up to its wait for the COMMIT
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        # the COMMIT had been handed over: it ended before the cancellation was let through,
        # so the connection is free for the next writer
        assert not db._conn.in_transaction
        await transact_here(
            db, lambda conn: conn.execute("INSERT INTO t VALUES (6)"), busy_timeout=5
        )
    finally:
        await db.close()
    assert _rows(path) == [5, 6]


async def test_the_outboxs_group_commit_runs_its_inserts_here(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.sqlite") as outbox:
        seen: list[tuple[str, int]] = []
        outbox.db._conn.set_trace_callback(lambda sql: seen.append((sql, threading.get_ident())))
        await outbox.submit([_item()])
        outbox.db._conn.set_trace_callback(None)
    here = threading.get_ident()
    inserts = {thread for sql, thread in seen if sql.startswith("INSERT INTO readings")}
    commits = {thread for sql, thread in seen if sql == "COMMIT"}
    assert inserts == {here} and commits and here not in commits


async def test_a_read_that_finds_the_file_busy_is_made_again_in_sqlites_thread(
    tmp_path: Path,
) -> None:
    """A WAL read gets SQLITE_BUSY only while another process recovers the WAL, which a test
    cannot time: the first attempt here says busy as SQLite would (code 261, BUSY_RECOVERY)."""
    db = await _open(tmp_path / "d.sqlite")
    await transact_here(db, lambda conn: conn.execute("INSERT INTO t VALUES (7)"), busy_timeout=5)
    where: list[tuple[int, int]] = []

    def read(conn: sqlite3.Connection) -> list[tuple[int]]:
        timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        where.append((threading.get_ident(), timeout))
        if len(where) == 1:
            busy = sqlite3.OperationalError("database is locked")
            busy.sqlite_errorcode = 261
            raise busy
        return conn.execute("SELECT x FROM t").fetchall()

    try:
        assert await read_here(db, read, busy_timeout=5) == [(7,)]
    finally:
        await db.close()
    (first, no_wait), (second, waits) = where
    assert first == threading.get_ident() and no_wait == 0  # never a lock wait on the loop
    assert second != first and waits == 5000


def test_every_extended_busy_code_is_busy() -> None:
    for code in (5, 261, 517, 773):  # BUSY, BUSY_RECOVERY, BUSY_SNAPSHOT, BUSY_TIMEOUT
        exc = sqlite3.OperationalError("database is locked")
        exc.sqlite_errorcode = code
        assert _busy(exc)
    exc = sqlite3.OperationalError("disk I/O error")
    exc.sqlite_errorcode = 10
    assert not _busy(exc)


async def test_a_writer_cancelled_during_its_commit_still_answers_its_submitters(
    tmp_path: Path,
) -> None:
    async with Outbox(tmp_path / "o.sqlite") as outbox:
        submitted = outbox.submit([_item()])
        await asyncio.sleep(0)  # the writer ran up to its wait for the COMMIT
        assert outbox._writer is not None
        outbox._writer.cancel()
        [result] = await submitted  # durable, and said so: not "stopped before committing"
        assert not result.duplicate
        assert (await outbox.status()).readings == 1


async def test_a_thread_job_whose_caller_is_cancelled_keeps_the_connection_until_it_ends(
    tmp_path: Path,
) -> None:
    async with Outbox(tmp_path / "o.sqlite") as outbox:

        def slow(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO cursors(device, stream, value) VALUES ('DEV', 'racp', 1)")
            time.sleep(0.3)

        job = asyncio.create_task(outbox.atomically(slow))
        await asyncio.sleep(0.05)  # the job is running in SQLite's thread
        for task in asyncio.all_tasks():  # as a loop shutting down cancels every task
            if task is not asyncio.current_task():
                task.cancel()
        [stored] = await outbox.ingest_many([_item()])  # waits, then its own txn
        with pytest.raises(asyncio.CancelledError):
            await job
        assert not stored.duplicate
        assert await outbox.load_cursor("DEV", "racp") == 1  # the cancelled job committed


async def test_a_reading_submitted_before_a_rotation_is_sealed_under_the_new_key(
    tmp_path: Path,
) -> None:
    async with Outbox(tmp_path / "o.sqlite") as outbox:
        submitted = outbox.submit([_item(b'{"v":1}')])  # sealed now, under the old key
        await outbox.rotate_key(os.urandom(32))  # the writer waits for it: inserts after
        await submitted
        assert await outbox.stored_payloads() == [b"{}"]
        assert await outbox.stored_envelopes("record") == [("k", b'{"v":1}', "weight")]
