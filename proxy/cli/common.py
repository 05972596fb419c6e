"""What every ``memproxy`` subcommand module shares: settings from flags, subparser setup."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from proxy.config import Settings
from proxy.config_sources import ConfigError, SettingsSources, load_settings_and_sources
from proxy.state.engine import Target, database_target, is_url


def settings_and_sources(
    args: argparse.Namespace, overrides: Mapping[str, Any] | None = None
) -> tuple[Settings, SettingsSources]:
    """The settings for this command and where they came from; a bad config is a message
    and exit status 2."""
    # Commands on the data dir have --data-dir; it overrides like any flag.
    given = {"data_dir": getattr(args, "data_dir", None), **(overrides or {})}
    try:
        return load_settings_and_sources(args.config, overrides=given)
    except ConfigError as exc:
        print(f"memproxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def settings_from_args(
    args: argparse.Namespace, overrides: Mapping[str, Any] | None = None
) -> Settings:
    return settings_and_sources(args, overrides)[0]


def local_database(args: argparse.Namespace, *, create: bool = False) -> Target | None:
    """The database a command works on directly: the shared Postgres of the deployment
    (``state.database_url`` / ``MEMPROXY_DATABASE_URL``), else the data dir's SQLite file.

    A command that only reads or changes what is there never creates the SQLite file: run in
    the wrong directory, it says so (on stderr) and gets None instead of a new empty data dir.
    """
    settings = settings_from_args(args)
    target = database_target(settings)
    if is_url(target):
        return target
    path = Path(target)
    if not create and not path.exists():
        print(f"memproxy: no data dir found: {path} does not exist (run where the proxy keeps "
              "its data, or pass --data-dir, or set MEMPROXY_DATA_DIR / data_dir)",
              file=sys.stderr)
        return None
    return path


def add_subcommand(
    sub: Any, name: str, help_text: str, func: Callable[[argparse.Namespace], int],
    *, json_flag: bool = False,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument("--config", default=argparse.SUPPRESS, help="path to config.yaml")
    parser.add_argument("--data-dir", help="the proxy's data dir (default: from the settings, "
                        "./data)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=func)
    return parser
