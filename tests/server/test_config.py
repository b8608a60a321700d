from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.config import DEFAULT_BASE_URL, DEFAULT_MODEL, load_settings
from tests.conftest import FAKE_KEY


def test_defaults_need_no_key() -> None:
    settings = load_settings()
    assert settings.api_key is None and not settings.has_key
    assert settings.base_url == DEFAULT_BASE_URL
    assert settings.model == DEFAULT_MODEL


def test_key4u_variables_win_over_openai_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    assert load_settings().base_url == "http://127.0.0.1:9/v1"
    assert load_settings().api_key.get_secret_value() == "sk-openai"  # type: ignore[union-attr]
    monkeypatch.setenv("KEY4U_API_KEY", FAKE_KEY)
    monkeypatch.setenv("KEY4U_BASE_URL", "https://gateway.example/v1")
    settings = load_settings()
    assert settings.api_key.get_secret_value() == FAKE_KEY  # type: ignore[union-attr]
    assert settings.base_url == "https://gateway.example/v1"


def test_dotenv_file_is_read_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("KEY4U_MODEL=gpt-5\nKEY4U_API_KEY=sk-from-dotenv\n")
    assert load_settings().model == "gpt-5"
    monkeypatch.setenv("KEY4U_MODEL", "gpt-4.1-mini")
    assert load_settings().model == "gpt-4.1-mini"


def test_only_prefixed_variables_are_settings_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "MODEL": "llama3",
        "TIMEOUT": "soon",
        "PROXY": "http://proxy.example:3128",
        "API_KEY": "x",
    }.items():
        monkeypatch.setenv(name, value)  # other tools' variables, named like our fields
    settings = load_settings()
    assert (settings.model, settings.timeout, settings.proxy, settings.api_key) == (DEFAULT_MODEL, 120.0, False, None)
    monkeypatch.setenv("key4u_model", "gpt-5")
    assert load_settings().model == "gpt-5"


def test_a_bad_value_is_located_at_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY4U_TIMEOUT", "soon")
    with pytest.raises(ValidationError) as raised:
        load_settings()
    assert [e["loc"] for e in raised.value.errors()] == [("KEY4U_TIMEOUT",)]
    monkeypatch.delenv("KEY4U_TIMEOUT")
    (tmp_path / "other.env").write_text("# a comment\nexport OPENAI_BASE_URL='ftp://x'\n")
    with pytest.raises(ValidationError) as raised:
        load_settings(env_file=tmp_path / "other.env")
    assert [e["loc"] for e in raised.value.errors()] == [("OPENAI_BASE_URL",)]


def test_a_dotenv_of_another_program_neither_stops_nor_changes_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / ".env").write_bytes(b"MODEL=llama3\nTIMEOUT=soon\nNAME=caf\xe9\nKEY4U_MODEL=gpt-5\n")
    settings = load_settings()
    assert (settings.model, settings.timeout) == ("gpt-5", 120.0)
    folder = tmp_path / "folder.env"
    folder.mkdir()  # not a file: not read at all
    assert load_settings(env_file=folder).model == DEFAULT_MODEL
    refused = tmp_path / "refused.env"
    refused.write_text("KEY4U_MODEL=x\n")
    monkeypatch.setattr(Path, "read_text", _refuse)  # root reads any mode: refuse as an unreadable file does
    assert load_settings(env_file=refused).model == DEFAULT_MODEL
    assert "ignoring" in caplog.text and "Permission denied" in caplog.text


def _refuse(self: Path, *args: object, **kwargs: object) -> str:
    raise PermissionError(13, "Permission denied", str(self))


def test_cli_overrides_win() -> None:
    assert load_settings(log_level="debug").log_level == "DEBUG"


def test_blank_key_counts_as_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY4U_API_KEY", "   ")
    assert load_settings().api_key is None


def test_key_never_appears_in_repr_or_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY4U_API_KEY", FAKE_KEY)
    settings = load_settings()
    assert FAKE_KEY not in repr(settings) + str(settings) + settings.model_dump_json()
    assert settings.secrets() == [FAKE_KEY]


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.model = "other"  # type: ignore[misc]


@pytest.mark.parametrize("url", ["api.key4u.shop/v1", "ftp://x/v1", "https://"])
def test_bad_base_url_is_rejected(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("KEY4U_BASE_URL", url)
    with pytest.raises(ValidationError, match="http\\(s\\) URL"):
        load_settings()
