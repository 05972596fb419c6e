"""Which of the caller's headers go on to the provider.

The proxy's own control headers (the memory mode, the user signature, the history budget)
never do: they are
for memproxy, and a provider has no use for them. The identity headers (user, agent,
session, and Open WebUI's ``X-OpenWebUI-*`` user-info headers) go on by default, as they
always did; ``identity.forward_headers: false`` keeps user ids and e-mails from a provider.
"""

from __future__ import annotations

from collections.abc import Iterable

from proxy.config import Settings

OPEN_WEBUI_PREFIX = "x-openwebui-"
HISTORY_BUDGET_HEADER = "x-memory-history-budget"  # proxy/gateway/shaping.py


def outgoing_headers(
    incoming: Iterable[tuple[str, str]], settings: Settings
) -> list[tuple[str, str]]:
    identity = settings.identity
    held = {identity.mode_header.lower(), settings.auth.signature_header.lower(),
            HISTORY_BUDGET_HEADER}
    strip_identity = not identity.forward_headers
    if strip_identity:
        held.update(name.lower() for name in identity.user_headers)
        held.update(name.lower() for name in identity.session_headers)
        held.add(identity.agent_header.lower())
    return [
        (name, value) for name, value in incoming
        if name.lower() not in held
        and not (strip_identity and name.lower().startswith(OPEN_WEBUI_PREFIX))
    ]
