"""Non-OpenAI providers through litellm, translated to and from the OpenAI format.

litellm costs seconds to import and milliseconds per call, so it is imported lazily and
used only for model names listed under ``models:`` in the config (and for extraction).
Its exceptions are translated here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncGenerator
from typing import Any

import anyio

from proxy.config import ModelRoute
from proxy.errors import ProxyError, UpstreamError, UpstreamTimeout, UpstreamUnreachable
from proxy.gateway.sse import encode_event

log = logging.getLogger("memproxy.providers")

# A model name litellm counts with its default (OpenAI) tokenizer: the one most chats use.
WARM_UP_MODEL = "gpt-4o-mini"


class ProviderError(ProxyError):
    """A provider's own 4xx/5xx, passed on with its status."""

    error_type = "upstream_error"

    def __init__(self, message: str, status_code: int, code: str | None = None):
        super().__init__(message, code=code or "provider_error")
        self.status_code = status_code
        if 400 <= status_code < 500:
            self.error_type = "invalid_request_error"


def load_litellm() -> Any:
    # Without this, importing litellm fetches a price list from the network.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # … and its Anthropic calls fetch a beta-headers list: the copy it ships is used instead.
    os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    # litellm logs two INFO lines per call ("LiteLLM completion() model=…"): one per
    # extraction call in our logs. Its warnings and errors still show.
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return litellm


def warm_litellm(litellm: Any) -> None:
    """Blocking; before "ready". litellm's first token count loads a tokenizer (~0.5 s) and its
    first completion imports ~40 more modules (~0.25 s), holding the interpreter: done after
    ready, by the first chats' jobs, it slowed every retrieval running beside it past its
    timeout (13 of a 200-chat burst right after ready went out without memories). A mock
    completion (litellm's ``mock_response``: no network) takes that path here instead."""
    started = time.perf_counter()
    try:
        litellm.token_counter(model=WARM_UP_MODEL, text="warm up")
        litellm.completion(
            model=f"openai/{WARM_UP_MODEL}", messages=[{"role": "user", "content": "warm up"}],
            mock_response="ok", api_key="none",
            # Were the mock ever ignored: a closed local port, never a provider.
            api_base="http://127.0.0.1:9/v1", timeout=1, num_retries=0,
        )
    except Exception as exc:  # a cold first call is slower, never wrong
        log.info("litellm warm-up failed (%s: %s)", type(exc).__name__, exc)
    log.debug("litellm warmed in %.2f s", time.perf_counter() - started)


async def litellm_module() -> Any:
    """litellm, imported in a worker thread: the import takes seconds and must not
    stall the event loop (and every chat on it)."""
    return await anyio.to_thread.run_sync(load_litellm)


def translate_litellm_error(exc: Exception) -> ProxyError:
    name = type(exc).__name__
    if "Timeout" in name:
        return UpstreamTimeout(f"provider timed out: {name}")
    if name == "APIConnectionError":
        return UpstreamUnreachable(f"provider unreachable: {name}")
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 600:
        message = str(getattr(exc, "message", "") or name)
        return ProviderError(message[:2000], status)
    return UpstreamError(f"provider call failed: {name}")


def _kwargs(body: dict[str, Any], route: ModelRoute) -> dict[str, Any]:
    kwargs = {k: v for k, v in body.items() if k not in ("model",)}
    kwargs.update(route.extra)
    kwargs["model"] = route.model
    kwargs["drop_params"] = True
    if route.api_key is not None:
        kwargs["api_key"] = route.api_key.get_secret_value()
    if route.api_base:
        kwargs["api_base"] = route.api_base
    return kwargs


def _as_dict(obj: Any) -> dict[str, Any]:
    return obj.model_dump(exclude_none=True) if hasattr(obj, "model_dump") else dict(obj)


async def complete_via_litellm(body: dict[str, Any], route: ModelRoute) -> dict[str, Any]:
    litellm = await litellm_module()
    try:
        response = await litellm.acompletion(**_kwargs(body, route))
    except Exception as exc:
        raise translate_litellm_error(exc) from exc
    result = _as_dict(response)
    result["model"] = body.get("model", result.get("model"))
    return result


async def open_litellm_stream(
    body: dict[str, Any], route: ModelRoute
) -> AsyncGenerator[bytes, None]:
    """Start the provider stream (errors surface here, before any byte is sent)."""
    litellm = await litellm_module()
    try:
        stream = await litellm.acompletion(**_kwargs(body, route))
    except Exception as exc:
        raise translate_litellm_error(exc) from exc
    return _relay_litellm_stream(stream, body.get("model"))


async def _relay_litellm_stream(stream: Any, model: Any) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in stream:
            data = _as_dict(chunk)
            data["model"] = model or data.get("model")
            data.setdefault("created", int(time.time()))
            yield encode_event(data)
        yield encode_event("[DONE]")
    except Exception as exc:
        raise translate_litellm_error(exc) from exc
    finally:
        closer = getattr(stream, "aclose", None)
        if closer is not None:
            await closer()
