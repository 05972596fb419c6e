"""Command line: ``memproxy serve``, ``memories``, ``users``, ``keys``, ``jobs``.

``serve``'s flags map one to one onto the common settings (``SERVE_FLAGS``); the environment
and the config file fill the rest.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from proxy import __version__, collector
from proxy.cli.admin import add_admin_commands
from proxy.cli.common import settings_and_sources, settings_from_args
from proxy.cli.jobs import add_jobs_commands
from proxy.cli.keys import add_keys_commands


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.app import create_app
    from proxy.listener import CannotListen, bind_listener

    settings, sources = settings_and_sources(
        args, {flag.setting: getattr(args, flag.dest) for flag in SERVE_FLAGS}
    )
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("memproxy.config").info("%s", sources.describe())
    # httpx logs every request URL at INFO (litellm's calls included): too chatty.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # One BLAS thread: a per-user search is one small matrix-vector product, and BLAS
    # threads spinning on every core starve the event loop and the embedder (bench: p99
    # added latency at 10k memories 47 → 24 ms).
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    collector.enable()  # start-up state frozen out of full collections (proxy/collector.py)
    try:  # before the app opens anything: a busy port is a message now, not in 40 s
        listener = bind_listener(settings.server.host, settings.server.port)
    except CannotListen as exc:
        print(f"memproxy: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        # The C event loop and HTTP parser: memory-off forwarding 460 → see README (bench).
        loop="uvloop",
        http="httptools",
        # Keep-alive past typical client idle time; the access log is ours to keep quiet.
        timeout_keep_alive=30,
        access_log=False,
        # Proxied responses carry the upstream's own Date/Server; uvicorn would add twins.
        server_header=False,
        date_header=False,
    )
    with listener:
        uvicorn.Server(config).run(sockets=[listener])
    return 0


def _export_model(args: argparse.Namespace) -> int:
    """Export the embedding model to ONNX now (a Docker build, an install) instead of at the
    first start."""
    settings = settings_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from proxy.memory.embedding import onnx_export_dir
    from proxy.memory.model_export import ExportFailed, export_model

    if settings.embedding.backend != "onnx":
        print("embedding.backend is torch: there is nothing to export")
        return 0
    target = onnx_export_dir(settings.embedding, settings.data_dir)
    try:
        manifest = export_model(settings.embedding, target)
    except ExportFailed as exc:
        print(f"memproxy: the ONNX export into {target} failed: {exc}", file=sys.stderr)
        return 1
    if not manifest.direct:
        print(f"embedding model exported (ONNX) in {target}; its pipeline needs "
              "sentence-transformers at run time (torch)")
        return 0
    print(f"embedding model ready (ONNX) in {target}")
    return 0


@dataclass(frozen=True)
class ServeFlag:
    flag: str
    setting: str  # dotted settings path
    help: str
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


# The common settings as flags; each overrides its setting (and its environment variable).
SERVE_FLAGS = (
    ServeFlag("--host", "server.host", "bind address (default 127.0.0.1; MEMPROXY_HOST)"),
    ServeFlag("--port", "server.port", "port (default 8000; MEMPROXY_PORT)", int),
    ServeFlag("--data-dir", "data_dir", "store, job database and model export "
              "(default ./data; MEMPROXY_DATA_DIR)"),
    ServeFlag("--upstream-url", "upstream.url", "OpenAI-compatible upstream base URL "
              "(default https://api.openai.com/v1; MEMPROXY_UPSTREAM_URL)"),
    ServeFlag("--extraction-mode", "extraction.mode", "what is remembered: llm facts, raw "
              "user messages, or nothing (default llm; MEMPROXY_EXTRACTION_MODE)",
              choices=("llm", "raw", "off")),
    ServeFlag("--extraction-model", "extraction.model", "model for extraction (default: the "
              "request's own; MEMPROXY_EXTRACTION_MODEL)"),
    ServeFlag("--auth-mode", "auth.mode", "none | keys | signed (default none; "
              "MEMPROXY_AUTH__MODE)", choices=("none", "keys", "signed")),
    ServeFlag("--workers", "jobs.workers", "extraction workers (default 4; "
              "MEMPROXY_JOBS__WORKERS)", int),
    ServeFlag("--log-level", "server.log_level", "default info (MEMPROXY_SERVER__LOG_LEVEL)",
              choices=("debug", "info", "warning", "error")),
)

SERVE_EPILOG = """\
Precedence: defaults < config file < MEMPROXY_* environment < these flags. The config file is
--config, else $MEMPROXY_CONFIG, else ./config.yaml when present; the start-up log says which
file and which variables were applied. Every other setting (see config.yaml): in the file, or
MEMPROXY_<SECTION>__<KEY>, e.g. MEMPROXY_RETRIEVAL__TOP_K=5. Secrets only by environment or
file, never as flags (they would show in `ps`): MEMPROXY_UPSTREAM_API_KEY, MEMPROXY_ADMIN_KEY.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"memproxy {__version__}")
    parser.add_argument("--config", help="path to config.yaml (default: $MEMPROXY_CONFIG, "
                        "else ./config.yaml when present)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the proxy", description="Run the proxy.", epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", default=argparse.SUPPRESS, help="path to config.yaml")
    for flag in SERVE_FLAGS:
        serve.add_argument(flag.flag, type=flag.type, choices=flag.choices, help=flag.help)
    serve.set_defaults(func=_serve)

    export = commands.add_parser(
        "export-model", help="export the embedding model to ONNX now (else: at first start)"
    )
    export.add_argument("--config", default=argparse.SUPPRESS, help="path to config.yaml")
    export.add_argument("--data-dir", help="data dir (the export goes to its models/)")
    export.set_defaults(func=_export_model)

    add_admin_commands(commands)
    add_keys_commands(commands)
    add_jobs_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
