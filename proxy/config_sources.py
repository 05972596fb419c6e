"""Settings: defaults < config.yaml < ``MEMPROXY_*`` environment < CLI flags.

The config file is ``--config PATH``, else ``$MEMPROXY_CONFIG`` (empty: none), else
``./config.yaml`` when the working directory has one. ``load_settings_and_sources`` also says
which file and which environment variables were applied (``memproxy serve`` logs it).

This is the only module that reads the environment. Nested settings are addressed as
``MEMPROXY_<SECTION>__<KEY>`` (e.g. ``MEMPROXY_RETRIEVAL__TOP_K=5``); the documented
short names (``MEMPROXY_UPSTREAM_URL`` …) are aliases for their nested keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from proxy.config import Settings

ENV_PREFIX = "MEMPROXY_"
DEFAULT_CONFIG_FILE = Path("config.yaml")  # read when present in the working directory

# Short environment names from the public contract → dotted setting paths.
ENV_ALIASES: dict[str, str] = {
    "UPSTREAM_URL": "upstream.url",
    "UPSTREAM_API_KEY": "upstream.api_key",
    "ANTHROPIC_URL": "anthropic.url",
    "ANTHROPIC_API_KEY": "anthropic.api_key",
    "DATA_DIR": "data_dir",
    "ADMIN_KEY": "admin_key",
    "EXTRACTION_MODE": "extraction.mode",
    "EXTRACTION_MODEL": "extraction.model",
    "HOST": "server.host",
    "PORT": "server.port",
    "DATABASE_URL": "state.database_url",
}


class ConfigError(ValueError):
    """The configuration file or environment holds an invalid value."""


@dataclass(frozen=True)
class SettingsSources:
    """Where the settings came from (variable names only: values may be secrets)."""

    config_file: Path | None = None
    config_reason: str = ""  # --config | MEMPROXY_CONFIG | working directory
    environment: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()  # dotted settings given on the command line

    def describe(self) -> str:
        where = (f"config file {self.config_file} ({self.config_reason})"
                 if self.config_file else "no config file (built-in defaults)")
        env = ", ".join(self.environment) or "none"
        text = f"settings: {where}; environment overrides: {env}"
        return text + (f"; flags: {', '.join(self.flags)}" if self.flags else "")


def describe_errors(exc: ValidationError) -> str:
    """One line per problem, joined: ``server.port = 99999: Input should be …``."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if where:
            problems.append(f"{where} = {error.get('input')!r}: {message}")
        else:
            problems.append(message)
    return "; ".join(problems)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def _env_names(environ: Mapping[str, str]) -> list[str]:
    return sorted(
        name for name in environ if name.startswith(ENV_PREFIX) and name != ENV_PREFIX + "CONFIG"
    )


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name in _env_names(environ):
        raw = environ[name]
        key = name[len(ENV_PREFIX) :]
        dotted = ENV_ALIASES.get(key) or key.lower().replace("__", ".")
        # YAML parsing gives numbers, booleans and lists their types ("5", "[a, b]").
        try:
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            value = raw
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            parsed: Any = raw  # YAML 1.1 reads "on"/"off"/"yes" as booleans; modes need text
        elif isinstance(value, dict | list | int | float | bool) or value is None:
            parsed = value
        else:
            parsed = raw
        _set_path(tree, dotted, "" if parsed is None else parsed)
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(
    config_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings once. ``overrides`` uses dotted keys (``{"server.port": 9000}``)."""
    return load_settings_and_sources(config_path, environ, overrides)[0]


def load_settings_and_sources(
    config_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Settings, SettingsSources]:
    env = os.environ if environ is None else environ
    path: str | Path | None
    if config_path:
        path, reason = config_path, "--config"
    elif ENV_PREFIX + "CONFIG" in env:
        path, reason = env[ENV_PREFIX + "CONFIG"] or None, ENV_PREFIX + "CONFIG"
    elif DEFAULT_CONFIG_FILE.is_file():
        path, reason = DEFAULT_CONFIG_FILE, "found in the working directory"
    else:
        path, reason = None, ""
    tree: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping")
        tree = loaded
    tree = _merge(tree, _env_overrides(env))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(tree, dotted, value)
    try:
        settings = Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {describe_errors(exc)}") from None
    sources = SettingsSources(
        Path(path) if path else None, reason, tuple(_env_names(env)),
        tuple(k for k, v in (overrides or {}).items() if v is not None),
    )
    return settings, sources
