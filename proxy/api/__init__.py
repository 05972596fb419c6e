"""The memory API (/v1/memories, /v1/users): routes, handlers, import/export, OpenAPI."""
