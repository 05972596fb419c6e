"""Counters for /metrics, in the Prometheus text format."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

from proxy.extraction.jobs import JobStats

JOB_EVENTS = (
    "enqueued", "duplicates", "enqueue_failures", "completed", "attempt_failures", "dead",
    "parked", "coalesced", "store_unavailable",
)


class Metrics:
    def __init__(self) -> None:
        self.memory_status: Counter[str] = Counter()
        self.memory_failures: Counter[str] = Counter()
        self.retrieval_seconds_sum = 0.0
        self.retrieval_count = 0
        # Per step of a chat's retrieval (embed, candidates, rank): seconds and count.
        self.phase_seconds: dict[str, float] = {}
        self.phase_count: Counter[str] = Counter()
        self.gauges: dict[str, Callable[[], float]] = {}
        self.extraction_usage: Mapping[str, int] | None = None  # Extractor.usage
        self.extraction_guards: Mapping[str, int] | None = None  # Extractor.guard_events

    def observe_retrieval(
        self, seconds: float, phases_ms: Mapping[str, float] | None = None
    ) -> None:
        self.retrieval_seconds_sum += seconds
        self.retrieval_count += 1
        for phase, ms in (phases_ms or {}).items():
            self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + ms / 1000
            self.phase_count[phase] += 1

    def render(self) -> str:
        lines = [
            "# HELP memproxy_memory_status_total Chat requests by X-Memory-Status.",
            "# TYPE memproxy_memory_status_total counter",
        ]
        for memory_status, count in sorted(self.memory_status.items()):
            lines.append(f'memproxy_memory_status_total{{status="{memory_status}"}} {count}')
        lines += [
            "# HELP memproxy_memory_failures_total Memory-layer failures (chat went on).",
            "# TYPE memproxy_memory_failures_total counter",
        ]
        for reason, n in sorted(self.memory_failures.items()):
            lines.append(f'memproxy_memory_failures_total{{reason="{reason}"}} {n}')
        lines += [
            "# TYPE memproxy_retrieval_seconds summary",
            f"memproxy_retrieval_seconds_sum {self.retrieval_seconds_sum:.6f}",
            f"memproxy_retrieval_seconds_count {self.retrieval_count}",
            "# HELP memproxy_retrieval_phase_seconds Chat retrievals' steps: the query"
            " embedding, the store's candidates, the ranking.",
            "# TYPE memproxy_retrieval_phase_seconds summary",
        ]
        for phase in sorted(self.phase_count):
            lines += [
                f'memproxy_retrieval_phase_seconds_sum{{phase="{phase}"}} '
                f"{self.phase_seconds[phase]:.6f}",
                f'memproxy_retrieval_phase_seconds_count{{phase="{phase}"}} '
                f"{self.phase_count[phase]}",
            ]
        if self.extraction_usage is not None:
            lines += render_extraction_usage(self.extraction_usage)
        if self.extraction_guards is not None:
            lines += render_guard_events(self.extraction_guards)
        for name, read in sorted(self.gauges.items()):
            lines += [f"# TYPE {name} gauge", f"{name} {read()}"]
        return "\n".join(lines) + "\n"


def render_job_metrics(stats: JobStats | None, counts: Mapping[str, int]) -> str:
    """The jobs section: rows by state (disjoint), lag, and this process's event counters."""
    lines = [f"memproxy_jobs_up {0 if stats is None else 1}"]
    if stats is not None:
        lines += [
            "# HELP memproxy_jobs Extraction jobs by state (failed: queued again after an error).",
            "# TYPE memproxy_jobs gauge",
        ]
        for state in ("queued", "failed", "running", "waiting_key", "dead", "done"):
            lines.append(f'memproxy_jobs{{state="{state}"}} {getattr(stats, state)}')
        lines += [
            "# HELP memproxy_jobs_lag_seconds Age of the oldest unfinished job.",
            "# TYPE memproxy_jobs_lag_seconds gauge",
            f"memproxy_jobs_lag_seconds {stats.lag_seconds:.3f}",
        ]
    lines += [
        "# HELP memproxy_job_events_total Job events in this process.",
        "# TYPE memproxy_job_events_total counter",
    ]
    for event in JOB_EVENTS:
        lines.append(f'memproxy_job_events_total{{event="{event}"}} {counts.get(event, 0)}')
    return "\n".join(lines) + "\n"


def render_extraction_usage(usage: Mapping[str, int]) -> list[str]:
    """LLM cost of memory: calls and tokens, in total and per exchange (coalesced: < 1 call)."""
    exchanges = usage.get("exchanges", 0)
    calls = usage.get("llm_calls", 0)
    tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    lines = [
        "# HELP memproxy_extraction_exchanges_total Exchanges sent to reconciliation.",
        "# TYPE memproxy_extraction_exchanges_total counter",
        f"memproxy_extraction_exchanges_total {exchanges}",
        "# HELP memproxy_extraction_llm_calls_total LLM calls made for memory (retries too).",
        "# TYPE memproxy_extraction_llm_calls_total counter",
        f"memproxy_extraction_llm_calls_total {calls}",
        "# TYPE memproxy_extraction_llm_tokens_total counter",
    ]
    for kind in ("prompt", "completion"):
        count = usage.get(kind + "_tokens", 0)
        lines.append(f'memproxy_extraction_llm_tokens_total{{kind="{kind}"}} {count}')
    lines += [
        "# HELP memproxy_extraction_llm_calls_per_exchange LLM calls / exchanges so far.",
        "# TYPE memproxy_extraction_llm_calls_per_exchange gauge",
        f"memproxy_extraction_llm_calls_per_exchange {calls / exchanges if exchanges else 0:.4f}",
        "# TYPE memproxy_extraction_llm_tokens_per_exchange gauge",
        f"memproxy_extraction_llm_tokens_per_exchange {tokens / exchanges if exchanges else 0:.1f}",
    ]
    return lines


GUARD_EVENTS = (
    "no_statement", "rejected_not_grounded", "rejected_duplicate", "rejected_empty_or_secret",
    "rejected_too_long",
    "rejected_forgotten", "rewritten", "same_to_add_says_more", "supersede_to_add_additive",
    "update_to_add_would_lose", "relation_unusable", "forget_partial", "forget_unresolved",
)


def render_guard_events(events: Mapping[str, int]) -> list[str]:
    """What the extraction guards refused or changed (proxy/extraction/guards.py), by event."""
    lines = [
        "# HELP memproxy_extraction_guard_total Model proposals the guards refused or changed, "
        "and turns that needed no model (no_statement).",
        "# TYPE memproxy_extraction_guard_total counter",
    ]
    for event in sorted(set(GUARD_EVENTS) | set(events)):
        lines.append(f'memproxy_extraction_guard_total{{event="{event}"}} {events.get(event, 0)}')
    return lines
