from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config_sources import ConfigError, load_settings, load_settings_and_sources


def test_defaults_match_the_documented_contract() -> None:
    settings = load_settings(None, environ={})
    assert settings.server.host == "127.0.0.1" and settings.server.port == 8000
    assert settings.upstream.url == "https://api.openai.com/v1"
    assert settings.data_dir == Path("./data")
    assert settings.extraction.mode == "llm" and settings.extraction.model == ""
    # Open WebUI's user-info headers are recognised without any setting (issue 10).
    assert settings.identity.user_headers == ["X-User-Id", "X-OpenWebUI-User-Id"]
    assert settings.identity.session_headers == ["X-Session-Id", "X-OpenWebUI-Chat-Id"]
    assert settings.identity.forward_headers is True
    assert settings.anthropic.url == "https://api.anthropic.com"


def test_shipped_config_yaml_equals_the_defaults() -> None:
    shipped = Path(__file__).resolve().parents[1] / "config.yaml"
    assert load_settings(shipped, environ={}) == load_settings(None, environ={})


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("upstream:\n  url: http://file/v1\nretrieval:\n  top_k: 3\n")
    env = {
        "MEMPROXY_CONFIG": str(config),
        "MEMPROXY_UPSTREAM_URL": "http://env/v1",
        "MEMPROXY_UPSTREAM_API_KEY": "sk-secret-value",
        "MEMPROXY_EXTRACTION_MODE": "raw",
        "MEMPROXY_IDENTITY__DEFAULT_MODE": "off",
        "MEMPROXY_IDENTITY__USER_HEADERS": "[X-OpenWebUI-User-Id, X-User-Id]",
        "MEMPROXY_DATA_DIR": str(tmp_path / "d"),
    }
    settings = load_settings(None, environ=env, overrides={"server.port": 9001})
    assert settings.upstream.url == "http://env/v1"
    assert settings.retrieval.top_k == 3
    assert settings.extraction.mode == "raw"
    assert settings.identity.default_mode == "off"  # not YAML's boolean False
    assert settings.identity.user_headers == ["X-OpenWebUI-User-Id", "X-User-Id"]
    assert settings.server.port == 9001
    assert settings.data_dir == tmp_path / "d"
    assert settings.upstream.api_key is not None
    assert settings.upstream.api_key.get_secret_value() == "sk-secret-value"
    # Secrets never show in reprs (and so never in logs that print settings).
    assert "sk-secret-value" not in repr(settings)


@pytest.mark.parametrize(
    "env",
    [
        {"MEMPROXY_EXTRACTION_MODE": "sometimes"},
        {"MEMPROXY_RETRIEVAL__TOP_K": "many"},
        {"MEMPROXY_NO_SUCH_SECTION__X": "1"},
    ],
)
def test_invalid_values_are_reported_not_ignored(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_settings(None, environ=env)


def test_unreadable_or_malformed_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad, environ={})


def test_config_yaml_in_the_working_directory_is_read_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings, sources = load_settings_and_sources(None, environ={})
    assert sources.config_file is None
    assert sources.describe() == (
        "settings: no config file (built-in defaults); environment overrides: none"
    )
    (tmp_path / "config.yaml").write_text("retrieval:\n  top_k: 3\n")
    settings, sources = load_settings_and_sources(
        None, environ={"MEMPROXY_ADMIN_KEY": "adm-secret", "MEMPROXY_PORT": "9"},
        overrides={"server.host": "0.0.0.0", "server.port": None},
    )
    assert settings.retrieval.top_k == 3 and settings.server.port == 9
    assert sources.describe() == (
        "settings: config file config.yaml (found in the working directory); environment "
        "overrides: MEMPROXY_ADMIN_KEY, MEMPROXY_PORT; flags: server.host"
    )
    assert "adm-secret" not in sources.describe()
    # An explicit file wins; MEMPROXY_CONFIG set to nothing means no file at all.
    other = tmp_path / "other.yaml"
    other.write_text("retrieval:\n  top_k: 5\n")
    assert load_settings(None, environ={"MEMPROXY_CONFIG": str(other)}).retrieval.top_k == 5
    assert load_settings(other, environ={}).retrieval.top_k == 5
    assert load_settings(None, environ={"MEMPROXY_CONFIG": ""}).retrieval.top_k == 8


@pytest.mark.parametrize(
    ("dotted", "value", "named"),
    [
        ("server.port", 99999, "server.port"),
        ("server.port", 0, "server.port"),
        ("retrieval.top_k", -3, "retrieval.top_k"),
        ("retrieval.min_score", 7, "retrieval.min_score"),
        ("store.shards", 0, "store.shards"),
        ("upstream.url", "not a url", "upstream.url"),
        ("upstream.url", "ftp://host/v1", "upstream.url"),
        ("upstream.connect_timeout", 0, "upstream.connect_timeout"),
        ("server.max_body_bytes", -1, "server.max_body_bytes"),
        ("store.max_memory_chars", 0, "store.max_memory_chars"),
        ("extraction.duplicate_threshold", 3, "extraction.duplicate_threshold"),
        ("server.log_level", "loud", "server.log_level"),
        ("retrieval.timezone", "Mars/Olympus_Mons", "retrieval.timezone"),
        ("retrieval.timezone", "../../etc/passwd", "retrieval.timezone"),
    ],
)
def test_out_of_range_settings_are_refused_with_a_message_naming_them(
    dotted: str, value: object, named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={}, overrides={dotted: value})
    message = str(caught.value)
    assert named in message and repr(value) in message and "\n" not in message, message


def test_anthropic_upstream_from_the_environment_with_or_without_v1() -> None:
    for url in ("https://claude.example/v1", "https://claude.example/", "https://claude.example"):
        settings = load_settings(None, environ={
            "MEMPROXY_ANTHROPIC_URL": url, "MEMPROXY_ANTHROPIC_API_KEY": "sk-ant-op"})
        assert settings.anthropic_base == "https://claude.example"
        assert settings.anthropic.api_key is not None
        assert "sk-ant-op" not in repr(settings)
    with pytest.raises(ConfigError, match="anthropic.url"):
        load_settings(None, environ={"MEMPROXY_ANTHROPIC_URL": "claude.example"})


def test_one_session_header_as_before_still_works(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("identity:\n  session_header: X-Conversation\n")
    assert load_settings(config, environ={}).identity.session_headers == ["X-Conversation"]
