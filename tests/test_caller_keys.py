"""The callers' keys held in memory: a job only ever gets a key for its own provider."""

from __future__ import annotations

from proxy.extraction.workers import CallerKeys, provider_of


def test_a_job_after_a_restart_gets_the_latest_key_of_its_own_provider_only() -> None:
    keys = CallerKeys()
    keys.remember("t/u", "sk-openai", model="gpt-4o-mini")
    keys.remember("t/u", "sk-ant-anthropic", model="anthropic/claude-sonnet-4")
    # Jobs whose own key was lost (no job id held): the owner's latest for that provider.
    assert keys.key_for(None, "t/u", "gpt-4o-mini") == "sk-openai"
    assert keys.key_for(None, "t/u", "anthropic/claude-sonnet-4") == "sk-ant-anthropic"
    keys.remember("t/v", "sk-ant-only", model="anthropic/claude-haiku")
    assert keys.key_for(None, "t/v", "gpt-4o-mini") is None  # never the other provider's


def test_a_jobs_own_key_wins_and_provider_names_come_from_the_litellm_prefix() -> None:
    keys = CallerKeys()
    keys.remember("t/u", "sk-job", job_id=7, model="gpt-4o")
    keys.remember("t/u", "sk-newer", model="gpt-4o")
    assert keys.key_for(7, "t/u", "gpt-4o") == "sk-job"
    assert provider_of("anthropic/claude") == "anthropic"
    assert provider_of("gpt-4o") == provider_of("openai/gpt-4o") == provider_of("") == ""
