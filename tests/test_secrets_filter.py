"""The deterministic secrets filter: values redacted, facts about a secret dropped, ordinary
facts kept."""

from __future__ import annotations

import pytest

from proxy.extraction.secrets import REDACTED, redact_secrets, scrub_fact


@pytest.mark.parametrize("fact", [
    "User's card number is 4111.1111.1111.1111",
    "User's password hunter2",
    "User's passphrase correct-horse-battery-staple",
    "User's wifi passcode Tr0ub4dor&3",
    "User's pwd s3cret!",
    "User's API key is sk-proj-abcdefghijklmnop1234",
])
def test_facts_about_a_secret_are_dropped(fact: str) -> None:
    assert scrub_fact(fact) is None


@pytest.mark.parametrize(("text", "kept"), [
    ("paid with 4111.1111.1111.1111 at IKEA", f"paid with {REDACTED} at IKEA"),
    ("my password hunter2, please remember", f"my password {REDACTED}, please remember"),
])
def test_values_are_redacted_in_place(text: str, kept: str) -> None:
    assert redact_secrets(text) == kept


@pytest.mark.parametrize("fact", [
    "User uses a password manager",
    "User reset their password yesterday",
    "User runs version 1.2.3.4 of the app",
    "User's phone model is 4111.11",
    "User will pin 2 photos to the board",
])
def test_ordinary_facts_are_kept(fact: str) -> None:
    assert scrub_fact(fact) == fact
