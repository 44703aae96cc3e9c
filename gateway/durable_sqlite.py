"""Opening SQLite the one way edge stores data: WAL + ``synchronous=FULL``, read back and enforced.

WAL with NORMAL stays consistent but loses acknowledged commits on power loss; the outbox and the
local record acknowledge readings to devices and uplinks, so both refuse to run without FULL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiosqlite

SYNCHRONOUS_FULL = 2
HANDOVER_WAIT = 0.01  # seconds the loop's thread waits for the COMMIT to start in SQLite's

T = TypeVar("T")


async def open_durable(
    path: Path, *, error: type[Exception], busy_timeout: float = 5.0, shared: bool = False
) -> aiosqlite.Connection:
    """Connect in autocommit mode (transactions are explicit) with the durable settings, or raise
    ``error`` saying which setting did not take. ``shared``: the connection may also be used
    from the event loop's thread (``transact_here``); the caller serialises every use of it."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner_only(path)
        db = await aiosqlite.connect(
            path, isolation_level=None, timeout=busy_timeout, check_same_thread=not shared
        )
    except (OSError, aiosqlite.Error) as exc:
        raise error(f"cannot open {path}: {exc}") from exc
    try:
        await db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        mode = await _scalar(db, "PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        sync = await _scalar(db, "PRAGMA synchronous")
        await db.execute("PRAGMA foreign_keys=ON")
        if str(mode).lower() != "wal" or sync != SYNCHRONOUS_FULL:
            raise error(
                f"{path} refuses to run without WAL + synchronous=FULL "
                f"(got journal_mode={mode}, synchronous={sync})"
            )
    except aiosqlite.Error as exc:  # e.g. another process holds the file in journal mode
        await db.close()
        raise error(f"cannot make {path} durable: {exc}") from exc
    except BaseException:
        await db.close()
        raise
    return db


class CancelledAfterCommit(asyncio.CancelledError):
    """The caller was cancelled while its COMMIT ran, and the COMMIT succeeded: ``result`` is
    what the transaction's work returned (what the caller's own callers are owed)."""

    result: object = None


def in_thread(db: aiosqlite.Connection, fn: Callable[[], T]) -> asyncio.Future[T]:
    """``fn`` queued as one job of aiosqlite's thread (one round trip, whatever it does); the
    future is the job's own (no task: cancelling every task leaves it alone)."""
    if not db._running:  # as aiosqlite's own calls: a job put after its stop would never run
        raise ValueError("Connection closed")
    job: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    db._tx.put_nowait((job, fn))
    return job


async def finish(job: asyncio.Future[T]) -> T:
    """Await a job of another thread; if cancelled meanwhile, let the cancellation through only
    once the job has ended: the caller's lock must not be given back (and another user run
    statements on the loop's thread) while the connection is still in use."""
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        while not job.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([job])
        raise


async def transact_here(
    db: aiosqlite.Connection, work: Callable[[sqlite3.Connection], T], *, busy_timeout: float
) -> T:
    """``BEGIN IMMEDIATE``, ``work``, ``COMMIT``, with only the COMMIT (the fsync) off the loop.

    Why: a job handed to aiosqlite's thread starts only once the loop's thread lets go of the
    GIL, so a whole transaction run there ends up in series with the caller's next CPU work
    (decoding and mapping the next readings) instead of beside it. Here ``work`` runs on the
    loop's thread, and the loop waits (GIL released) until SQLite's thread has started the
    COMMIT: the disk wait then overlaps whatever the loop does next. For short work that only
    writes (the loop is blocked while it runs); it never waits for another process's write
    lock here: a busy file is waited for in SQLite's thread. The connection must be opened
    ``shared`` and the caller must hold whatever serialises its use (no aiosqlite job may be
    running); aiosqlite has no public call for this (``_conn``, ``_tx``: the version is pinned).
    Cancelled during the COMMIT, it raises once the COMMIT has ended: ``CancelledAfterCommit``
    (with the result) if it succeeded.
    """
    conn: sqlite3.Connection = db._conn
    if not _begin_now(conn, busy_timeout):
        try:
            await finish(in_thread(db, lambda: conn.execute("BEGIN IMMEDIATE")))
        except asyncio.CancelledError:
            if conn.in_transaction:  # it began after all: nobody would end it
                conn.execute("ROLLBACK")
            raise
    try:
        result = work(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        await _commit_off_loop(db, conn)
    except CancelledAfterCommit as exc:
        exc.result = result
        raise
    return result


async def read_here(
    db: aiosqlite.Connection, work: Callable[[sqlite3.Connection], T], *, busy_timeout: float
) -> T:
    """``work`` (reads only, outside a transaction) on the loop's thread, in SQLite's thread
    if the file is busy (a WAL recovery by another process): the loop never waits for a lock.
    Same conditions as ``transact_here``."""
    conn: sqlite3.Connection = db._conn
    conn.execute("PRAGMA busy_timeout=0")
    try:
        return work(conn)
    except sqlite3.OperationalError as exc:
        if not _busy(exc):
            raise
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    return await finish(in_thread(db, lambda: work(conn)))


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY in any of its extended forms (recovery, snapshot, timeout)."""
    return exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY


def _begin_now(conn: sqlite3.Connection, busy_timeout: float) -> bool:
    """``BEGIN IMMEDIATE`` on this thread unless another connection holds the write lock."""
    conn.execute("PRAGMA busy_timeout=0")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if not _busy(exc):
            raise
        return False
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    return True


async def _commit_off_loop(db: aiosqlite.Connection, conn: sqlite3.Connection) -> None:
    # plain locks as one-shot signals: Event.wait runs Python code, Lock.acquire does not
    started, ended = threading.Lock(), threading.Lock()
    started.acquire()
    ended.acquire()
    failed: list[BaseException] = []

    def commit() -> None:
        started.release()
        try:
            conn.execute("COMMIT")
        except BaseException as exc:
            failed.append(exc)
            raise
        finally:
            ended.release()

    loop = asyncio.get_running_loop()
    try:
        done = in_thread(db, commit)
    except ValueError:  # closed: nobody would end the transaction
        conn.execute("ROLLBACK")
        raise
    started.acquire(timeout=HANDOVER_WAIT)
    try:
        await done
    except asyncio.CancelledError:
        # the COMMIT goes on in SQLite's thread: the connection is not free before it ends
        # (waited for in another thread: the loop runs on meanwhile)
        await finish(loop.run_in_executor(None, ended.acquire))
        if failed:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        raise CancelledAfterCommit from None
    except BaseException:
        if conn.in_transaction:  # a failed COMMIT (disk full, I/O error) may leave it open
            conn.execute("ROLLBACK")
        raise


def owner_only(path: Path) -> None:
    """Health data: the file (and the -wal/-shm files SQLite creates with its mode) readable by
    this user only, whatever the umask. A file another user owns is left alone (read-only use)."""
    if not path.exists():
        path.touch(mode=0o600)
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = file.stat()
            if mode.st_mode & 0o077 and mode.st_uid == os.getuid():
                file.chmod(0o600)
        except FileNotFoundError:
            continue
        except OSError:
            pass


async def _scalar(db: aiosqlite.Connection, sql: str) -> object:
    row = await (await db.execute(sql)).fetchone()
    return None if row is None else row[0]
