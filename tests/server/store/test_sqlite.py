from __future__ import annotations

import time
from pathlib import Path

from server.bridge.conversation import Conversation, Options
from server.store.sqlite import ConversationStore


def conv(text: str = "") -> Conversation:
    return Conversation(options=Options(model="gpt-4.1"), text=text)


def test_conversations_survive_reopening_and_no_file_is_made_until_needed(tmp_path: Path) -> None:
    path = tmp_path / "state" / "conversations.sqlite3"
    store = ConversationStore(path)
    assert not path.exists()
    saved = conv("hello")
    store.put(saved)
    store.close()
    again = ConversationStore(path)
    loaded = again.get(saved.id)
    assert loaded is not None and loaded.text == "hello" and loaded.options.model == "gpt-4.1"
    assert again.get("conv_missing") is None
    again.close()


def test_the_store_is_bounded_in_count_and_age(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "db", max_conversations=5, max_age_days=1)
    old = conv("old")
    store.put(old)
    store._db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (time.time() - 3 * 86400, old.id))
    for i in range(8):
        store.put(conv(str(i)))
    store.prune()
    assert store.get(old.id) is None
    assert store.count() == 5
    store.close()
