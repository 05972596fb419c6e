"""Static checks of compose.yaml (no container engine runs here): the scale-out deployment
wires every replica to the one Postgres and the one Chroma server, with settings memproxy
accepts."""

from __future__ import annotations

from pathlib import Path

import yaml

from proxy.config_sources import load_settings
from proxy.state.engine import database_target, is_url

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())


def resolved(value: str) -> str:
    """${NAME:-default} → default; ${NAME:?message} → a placeholder (a required secret)."""
    import re

    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "required-secret", value)


def test_services_are_proxy_postgres_and_chroma() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"proxy", "postgres", "chroma"}
    assert services["proxy"]["deploy"]["replicas"] >= 2
    assert services["proxy"]["build"] == "."
    assert (ROOT / "Dockerfile").exists()
    assert set(services["proxy"]["depends_on"]) == {"postgres", "chroma"}
    for volume in ("postgres", "chroma"):
        assert volume in COMPOSE["volumes"]


def test_the_proxy_environment_is_valid_memproxy_settings() -> None:
    env = {k: resolved(str(v)) for k, v in COMPOSE["services"]["proxy"]["environment"].items()}
    settings = load_settings(None, environ=env)
    url = database_target(settings)
    assert is_url(url)
    postgres = COMPOSE["services"]["postgres"]["environment"]
    assert f"@postgres:5432/{postgres['POSTGRES_DB']}" in str(url)
    assert str(url).startswith(f"postgresql://{postgres['POSTGRES_USER']}:")
    assert settings.store.chroma_host == "chroma" and settings.store.chroma_port == 8000
    assert settings.store.cache_ttl_seconds > 0


def test_chroma_is_the_version_the_client_speaks_and_reports_nothing() -> None:
    import chromadb

    chroma = COMPOSE["services"]["chroma"]
    assert chroma["image"] == f"chromadb/chroma:{chromadb.__version__}"
    assert chroma["environment"]["ANONYMIZED_TELEMETRY"] == "False"
