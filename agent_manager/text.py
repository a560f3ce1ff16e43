"""Text that is Unicode: what SQLite, the UTF-8 pages and JSON readers can all take.

A Python string can hold a lone surrogate (U+D800-U+DFFF without its other half): JSON spells
one as ``"\\ud800"``, and a CLI printing JSON (Claude Code's stream-json from JavaScript, which
can cut a string between the halves of a pair) may send one. It is not text: encoding it as
UTF-8 fails, so the first one that reached the event writer ended its thread, and no run of
the service stored another event. Lone surrogates become U+FFFD, as invalid UTF-8 read from a
pipe does.
"""

from __future__ import annotations

import json
import re
from typing import Any

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# In JSON text: an escape that decodes to a surrogate (pairs decode to one character, lone ones stay).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def unicode_only(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (in lists, tuples and dicts too, keys
    included) replaced by U+FFFD; anything else as it is."""
    if isinstance(value, str):
        return value if value.isascii() else _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {unicode_only(k): unicode_only(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(unicode_only(v) for v in value)
    return value


def may_decode_to_surrogates(json_text: str) -> bool:
    """Whether ``json.loads(json_text)`` can hold a lone surrogate (cheap: most lines have no
    ``\\uD8xx``-``\\uDFxx`` escape, and only those need ``unicode_only``)."""
    return "\\u" in json_text and _SURROGATE_ESCAPE.search(json_text) is not None


def json_text(document: str) -> Any:
    """``json.loads`` for JSON an agent printed: its strings hold no lone surrogate (ValueError
    as json.loads for what is not JSON)."""
    value = json.loads(document)
    return unicode_only(value) if may_decode_to_surrogates(document) else value
