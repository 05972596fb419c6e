"""What every ``memproxy`` subcommand module shares: settings from flags, subparser setup."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import Any

from proxy.config import ConfigError, Settings, SettingsSources, load_settings_and_sources


def settings_and_sources(
    args: argparse.Namespace, overrides: Mapping[str, Any] | None = None
) -> tuple[Settings, SettingsSources]:
    """The settings for this command and where they came from; a bad config is a message
    and exit status 2."""
    try:
        return load_settings_and_sources(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"memproxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def settings_from_args(
    args: argparse.Namespace, overrides: Mapping[str, Any] | None = None
) -> Settings:
    return settings_and_sources(args, overrides)[0]


def add_subcommand(
    sub: Any, name: str, help_text: str, func: Callable[[argparse.Namespace], int],
    *, json_flag: bool = False,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument("--config", default=argparse.SUPPRESS, help="path to config.yaml")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=func)
    return parser
