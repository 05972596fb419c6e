"""Text that goes inside a delimited block of a prompt, made unable to break out of it.

``neutralise_markup`` gives one line: every run of whitespace, Unicode line breaks included
(``\\r``, U+0085, U+2028, U+2029, vertical tab, form feed, the C0 separators …), becomes one
space; and every ``<`` that starts something tag-like (a letter, ``/``, ``!`` or ``?`` after
it, with optional spaces or invisible characters in between) becomes ``‹`` (U+2039), as do
the full-width and small forms of ``<``. So neither ``</memories>`` in any spelling
(``</MEMORIES>``, ``</Memories >``, ``< /memories\\n>``) nor a fake ``<memories>`` nor a faked
line of the prompt (``\\nNewest turn: …``) survives, whatever the delimiter's name.
"""

from __future__ import annotations

import re

LOOKALIKE_LT = "\u2039"  # ‹
# "<" and the forms NFKC folds into it (full-width, small).
_LT = "<\uff1c\ufe64"
# Invisible characters a tag name could hide behind: zero-width spaces/joiners, marks, BOM.
_INVISIBLE = "\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff"
_TAG_START = re.compile(rf"[{_LT}](?=[\s{_INVISIBLE}]*(?:[/!?]|[^\W\d]))")


def neutralise_markup(text: str) -> str:
    """One line, with no tag-like sequence left (see the module docstring)."""
    one_line = " ".join(text.split())
    return _TAG_START.sub(LOOKALIKE_LT, one_line)
