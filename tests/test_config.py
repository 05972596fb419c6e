from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, load_settings


def test_defaults_match_the_documented_contract() -> None:
    settings = load_settings(None, environ={})
    assert settings.server.host == "127.0.0.1" and settings.server.port == 8000
    assert settings.upstream.url == "https://api.openai.com/v1"
    assert settings.data_dir == Path("./data")
    assert settings.extraction.mode == "llm" and settings.extraction.model == ""
    assert settings.identity.user_headers == ["X-User-Id"]


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
