from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from server.logs import RedactingFilter, configure_logging
from tests.conftest import FAKE_KEY


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_key_is_masked_in_messages_arguments_and_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", [FAKE_KEY])
    log = logging.getLogger("key4u.test")
    log.info("calling with %s", f"Bearer {FAKE_KEY}")
    try:
        raise RuntimeError(f"upstream said: bad key {FAKE_KEY}")
    except RuntimeError:
        log.exception("failed")
    captured = capsys.readouterr()
    assert captured.out == ""  # never stdout
    assert "Bearer ***" in captured.err and "bad key ***" in captured.err
    assert FAKE_KEY not in captured.err


def test_filter_without_secrets_leaves_records_alone() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a %s", ("b",), None)
    assert RedactingFilter([]).filter(record) and record.getMessage() == "a b"
