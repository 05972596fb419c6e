"""A deterministic last line against secrets in memories, whatever the model returned.

Values that look like credentials are redacted: provider API keys (``sk-…``, ``AKIA…``,
``ghp_…``, ``xox?-…``, ``AIza…``), long random-looking tokens, JWTs, card numbers (13–19
digits passing the Luhn check, grouped by spaces, dashes or dots), whatever follows
"password/passcode/PIN/API key … is/:", and a password-like value (holding a digit or a
symbol) right after "password/passphrase/passcode/pwd" ("password hunter2",
"passphrase correct-horse-battery-staple"; "password manager" stays).
A fact that still names a credential once its value is redacted is about the secret itself
("User's password is [redacted]") and is dropped; otherwise the redacted fact is kept
("User deploys with key [redacted] to Fly.io" keeps "deploys to Fly.io").
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"

_PROVIDER_KEYS = re.compile(
    r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|xox[abpors]-[A-Za-z0-9\-]{10,}|AIza[0-9A-Za-z_\-]{30,}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,})"
)
# 24+ characters mixing letters and digits with no spaces: random tokens, not words.
_RANDOM_TOKEN = re.compile(r"\b(?=[A-Za-z0-9_\-+/=]*\d)(?=[A-Za-z0-9_\-+/=]*[A-Za-z])"
                           r"[A-Za-z0-9_\-+/=]{24,}\b")
_CARD = re.compile(r"(?<![\d.])(?:\d[ \-.]?){12,18}\d(?![\d]|\.\d)")
_CREDENTIAL = (
    r"(?:password|passwort|passwd|pwd|passcode|passphrase|pin(?: code)?|api[ _\-]?key"
    r"|access[ _\-]?key|secret(?: key)?|token|cvv|cvc|security code|ssn"
    r"|social security number|card number|credit card|iban|account number)"
)
_CREDENTIAL_VALUE = re.compile(
    rf"(\b{_CREDENTIAL}s?\b[^.;,\n]{{0,20}}?(?:\bis\b|\bwas\b|:|=)\s*)(\"[^\"]+\"|'[^']+'|\S+)",
    re.IGNORECASE,
)
# "password hunter2": no "is" or ":", so only a value that looks like one (a digit or symbol).
_BARE_CREDENTIAL = re.compile(
    r"(\b(?:password|passwort|passwd|pwd|passcode|passphrase)s?\s+)"
    r"((?=[^\s,;]*[0-9!@#$%^&*+=~_\-])[^\s,;]{3,})",
    re.IGNORECASE,
)
_NAMES_CREDENTIAL = re.compile(rf"\b{_CREDENTIAL}s?\b", re.IGNORECASE)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def redact_secrets(text: str) -> str:
    def card(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        return REDACTED if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)

    text = _PROVIDER_KEYS.sub(REDACTED, text)
    text = _CARD.sub(card, text)
    text = _CREDENTIAL_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BARE_CREDENTIAL.sub(lambda m: m.group(1) + REDACTED, text)
    return _RANDOM_TOKEN.sub(REDACTED, text)


def scrub_fact(text: str) -> str | None:
    """The fact with secrets redacted, or None when it is about a secret itself."""
    redacted = redact_secrets(text)
    if redacted != text and _NAMES_CREDENTIAL.search(redacted):
        return None
    if redacted.replace(REDACTED, "").strip(" .,:;-") == "":
        return None
    return redacted


def keeps_a_secret(fact: str, said: str) -> bool:
    """The user gave a secret and the fact is about a credential: the model left the value
    out ("User has an API key that should be kept for them"), but the fact only exists to keep
    the secret. Refused like the secret itself."""
    gave_one = REDACTED in said or redact_secrets(said) != said  # job rows are scrubbed already
    return gave_one and bool(_NAMES_CREDENTIAL.search(fact))
