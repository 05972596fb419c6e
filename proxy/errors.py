"""The errors memproxy answers with, all rendered in OpenAI's shape.

    ProxyError                      500 server_error
    ├── InvalidRequest              400 invalid_request_error
    │   ├── InvalidJSON             400 code=invalid_json
    │   └── InvalidHeader           400 code=invalid_header
    ├── PayloadTooLarge             413 code=payload_too_large
    ├── AuthenticationFailed        401 authentication_error
    ├── PermissionDenied            403 permission_error
    ├── NotFound                    404 code=not_found
    ├── MethodNotAllowed            405 code=method_not_allowed
    ├── Conflict                    409 code=conflict
    ├── NotConfigured               503 code=not_configured
    └── UpstreamError               502/504 upstream_error
        ├── UpstreamUnreachable     502 code=upstream_unreachable
        └── UpstreamTimeout         504 code=upstream_timeout

    MemoryUnavailable  — raised by the memory layer (store, embedder, retrieval); never sent
                         to a client: the chat is forwarded without memories instead.

Foreign exceptions (httpx, chromadb, litellm) are translated where they enter our code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.responses import JSONResponse


class ProxyError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.code, self.param)

    def to_response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.to_body(), status_code=self.status_code, headers=headers)


class InvalidRequest(ProxyError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class InvalidHeader(InvalidRequest):
    code = "invalid_header"


class PayloadTooLarge(ProxyError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class AuthenticationFailed(ProxyError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ProxyError):
    status_code = 403
    error_type = "permission_error"
    code = "forbidden"


class NotFound(ProxyError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(ProxyError):
    status_code = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: Sequence[str]):
        super().__init__(message)
        self.allow = list(allow)

    def to_response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return super().to_response({"Allow": ", ".join(self.allow), **(headers or {})})


class Conflict(ProxyError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class NotConfigured(ProxyError):
    """A route that needs a setting the operator has not made."""

    status_code = 503
    error_type = "server_error"
    code = "not_configured"


class UpstreamError(ProxyError):
    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class MemoryUnavailable(Exception):
    """The memory layer failed; callers fall back to forwarding without memories."""


def error_body(
    message: str, error_type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
