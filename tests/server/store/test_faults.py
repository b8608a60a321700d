"""Database faults are reported, not fatal: every failure is a ``StoreError`` naming the file, the store
works again once the cause is gone, a corrupt file is moved aside, and one bad row hides only itself.

All against real SQLite files. Tests run as root on some machines, where chmod stops nothing: the
refused writes there come from the path itself (a directory, a file where a directory should be) or
from SQLite's own limits on the open connection (``query_only``, ``max_page_count``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from server.bridge.conversation import Conversation, Options
from server.errors import StoreError
from server.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


def conv(text: str = "") -> Conversation:
    return Conversation(options=Options(model="gpt-4.1"), text=text)


def moved_aside(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.corrupt-"))


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.WARNING, logger="server.store.sqlite")
    yield caplog


def damage_pages(path: Path) -> bytes:
    """Overwrite the pages after the first (which holds the schema) with garbage; the file's new bytes."""
    assert not Path(f"{path}-wal").exists()
    with path.open("r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * 4096 * 3)
    return path.read_bytes()


def chmod_stops_writes(directory: Path) -> bool:
    """Whether this process is refused a write in ``directory`` once it is read-only (root is not)."""
    try:
        (directory / "probe").touch()
    except PermissionError:
        return True
    (directory / "probe").unlink()
    return False


async def test_a_read_only_directory_and_file_are_reported_and_the_same_store_works_once_fixed(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    path = directory / "c.sqlite3"
    store = SQLiteStore(path)
    first = conv("before")
    await store.put(first)
    await store.aclose()  # as a server restarting on a file it may no longer write
    path.chmod(0o444)
    directory.chmod(0o555)
    try:
        if not chmod_stops_writes(directory):
            pytest.skip(
                "this process writes through chmod 0o444/0o555 (root); refused writes are tested by "
                "test_a_write_the_open_file_refuses_is_reported_and_the_next_call_opens_it_again"
            )
        with pytest.raises(StoreError) as caught:
            await store.put(conv("refused"))
        assert caught.value.path == str(path) and str(path) in str(caught.value)
        assert "KEY4U_DB_PATH" in str(caught.value)  # the hint says the fix
    finally:
        directory.chmod(stat.S_IRWXU)
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    later = conv("after")
    await store.put(later)
    assert [i.id for i in await store.list()] == [later.id, first.id]
    await store.aclose()


@pytest.mark.parametrize("blocker", ["parent is a file", "path is a directory"])
async def test_a_path_that_cannot_be_opened_is_reported_and_the_same_store_opens_it_once_fixed(
    tmp_path: Path, blocker: str
) -> None:
    path = tmp_path / "state" / "c.sqlite3"
    if blocker == "parent is a file":
        path.parent.write_text("not a directory")
    else:
        path.mkdir(parents=True)
    store = SQLiteStore(path)
    for _ in range(2):  # the failed open left nothing half-open behind: it fails the same way again
        with pytest.raises(StoreError) as caught:
            await store.get("conv_x")
        assert caught.value.path == str(path) and str(path) in caught.value.message
        assert isinstance(caught.value.__cause__, (OSError, sqlite3.Error))
    if blocker == "parent is a file":
        path.parent.unlink()
    else:
        path.rmdir()
    saved = conv("opened at last")
    await store.put(saved)
    stored = await store.get(saved.id)
    assert stored is not None and stored.conversation.text == "opened at last"
    await store.aclose()


@pytest.mark.parametrize(
    ("pragma", "cause"),
    [("query_only = 1", "readonly"), ("max_page_count = {pages}", "full")],
    ids=["read-only", "disk full"],
)
async def test_a_write_the_open_file_refuses_is_reported_and_the_next_call_opens_it_again(
    tmp_path: Path, pragma: str, cause: str
) -> None:
    path = tmp_path / "c.sqlite3"
    store = SQLiteStore(path)
    first = conv("saved")
    await store.put(first)
    db = store._conn
    assert db is not None
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA {pragma.format(pages=pages)}")  # SQLite now refuses this connection's writes
    with pytest.raises(StoreError) as caught:
        await store.put(conv("x" * 50_000))
    assert cause in str(caught.value) and str(path) in str(caught.value)
    assert "free space" in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    later = conv("saved again")
    await store.put(later)  # a new connection: the refusal was the old one's
    assert await store.count() == 2
    await store.aclose()


async def test_a_file_of_garbage_is_moved_aside_and_a_new_database_started(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.sqlite3"
    garbage = b"this is not a database at all " * 300
    path.write_bytes(garbage)
    store = SQLiteStore(path)
    saved = conv("in the new database")
    await store.put(saved)
    [moved] = moved_aside(path)
    assert moved.name.startswith("c.sqlite3.corrupt-") and int(moved.name.rsplit("-", 1)[1]) <= time.time()
    assert moved.read_bytes() == garbage
    assert store.notice == (
        f"the conversation database {path} was corrupt; it was moved to {moved} and a new one was started"
    )
    [record] = [r for r in warnings.records if "corrupt" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert str(path) in record.getMessage() and str(moved) in record.getMessage()
    stored = await store.get(saved.id)
    assert stored is not None and stored.conversation.text == "in the new database"
    assert store.notice is not None and str(moved) in store.notice  # it stays set
    await store.aclose()
    again = SQLiteStore(path)  # the new file is a sound database
    assert await again.count() == 1 and again.notice is None
    await again.aclose()


async def test_a_file_with_malformed_pages_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = SQLiteStore(path)
    saved = [conv(f"conversation {i} " * 20) for i in range(100)]
    for c in saved:
        await store.put(c)
    await store.aclose()  # the last connection folds the log into the file
    damaged = damage_pages(path)
    again = SQLiteStore(path)
    assert await again.get(saved[0].id) is None  # the new database has none of them
    [moved] = moved_aside(path)
    assert moved.read_bytes() == damaged
    assert again.notice is not None and str(moved) in again.notice
    await again.put(saved[1])
    assert await again.count() == 1
    await again.aclose()


async def test_a_file_another_process_moved_aside_is_left_for_the_new_one(tmp_path: Path) -> None:
    """Two processes share the file; one finds it corrupt and moves it aside (as ``_move_aside`` does: the
    file and its side files renamed). The other, whose next writes touch no damaged page, writes on into the
    new file too, where the first finds its conversations, not into the one set aside."""
    path = tmp_path / "c.sqlite3"
    other = SQLiteStore(path)
    saved = conv("from before")
    await other.put(saved)
    assert await other.get(saved.id) is not None  # its connection is open on the file, its parts cached
    aside = tmp_path / "c.sqlite3.corrupt-1"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    finder = SQLiteStore(path)
    await finder.put(conv("in the new file"))
    later = conv("written after the move")
    await other.put(later)  # the other process, on its old connection
    stored = await finder.get(later.id)
    assert stored is not None and stored.conversation.text == "written after the move"
    assert await other.get(saved.id) is None  # nothing of the old file, cached or not
    assert other.notice is not None and "replaced" in other.notice
    await other.aclose()
    await finder.aclose()
    with sqlite3.connect(aside) as set_aside:  # the file set aside got nothing new
        assert set_aside.execute("SELECT id FROM conversations").fetchall() == [(saved.id,)]


async def test_a_row_that_no_longer_reads_as_a_conversation_hides_only_itself(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.sqlite3"
    store = SQLiteStore(path)
    good, wrong_shape, not_json = conv("good"), conv("wrong shape"), conv("not json")
    for c in (good, wrong_shape, not_json):
        await store.put(c)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE conversations SET data = ? WHERE id = ?", ('{"options": {}}', wrong_shape.id))
        db.execute("UPDATE conversations SET data = ? WHERE id = ?", ("{not json", not_json.id))
    db.close()
    assert await store.get(wrong_shape.id) is None
    assert await store.get(not_json.id) is None
    stored = await store.get(good.id)
    assert stored is not None and stored.conversation.text == "good"
    assert [i.id for i in await store.list()] == [good.id]
    assert await store.claim(wrong_shape.id, "me", 30) is None
    with sqlite3.connect(path) as db:
        owners = dict(db.execute("SELECT id, owner FROM conversations").fetchall())
    db.close()
    assert owners == {good.id: None, wrong_shape.id: None, not_json.id: None}  # none deleted, none claimed
    assert store.notice is None and moved_aside(path) == []
    logged = [r.getMessage() for r in warnings.records if r.levelno == logging.WARNING]
    assert any(wrong_shape.id in m and str(path) in m for m in logged)
    assert any(not_json.id in m for m in logged)
    assert await store.claim(good.id, "me", 30) is not None
    await store.aclose()


async def test_a_lock_held_briefly_elsewhere_is_waited_for_off_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = SQLiteStore(path, timeout=5)
    saved = conv("waits its turn")
    await store.put(saved)  # on the loop: nothing held it up
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    ticks, waited = 0, 0.0
    async with anyio.create_task_group() as tg:

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.sleep(0.01)

        async def let_go() -> None:
            await anyio.sleep(0.3)
            other.execute("ROLLBACK")

        tg.start_soon(tick)
        tg.start_soon(let_go)
        started = time.monotonic()
        saved.text = "after the wait"
        assert await store.put(saved)
        waited = time.monotonic() - started
        tg.cancel_scope.cancel()
    other.close()
    assert 0.25 <= waited < 4
    assert ticks >= 10  # the loop ran on while the save waited for the lock
    stored = await store.get(saved.id)
    assert stored is not None and stored.conversation.text == "after the wait"
    await store.aclose()


async def test_a_database_locked_by_another_process_is_reported_within_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = SQLiteStore(path, timeout=0.2)
    saved = conv("locked out")
    await store.put(saved)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            await store.put(saved)
        waited = time.monotonic() - started
        assert 0.15 <= waited < 3
        assert "locked" in str(caught.value) and str(path) in str(caught.value)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        with pytest.raises(StoreError, match="locked"):
            await store.claim(saved.id, "me", 30)
        stored = await store.get(saved.id)  # in WAL mode a reader is not held up by a writer
        assert stored is not None and stored.owner is None
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await store.claim(saved.id, "me", 30) is not None
    await store.aclose()
