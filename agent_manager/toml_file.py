"""Writing a TOML file that reads back as the same values, atomically and privately.

config.toml may hold secrets (a Daytona API key), so it is written mode 0600 under a fresh
temporary name opened with ``O_EXCL``: a link planted at a predictable temporary name is never
followed, and a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import tomli_w


def write(path: Path, values: dict[str, Any]) -> None:
    """Plain keys first, then the tables (TOML needs that order). tomli_w escapes every string
    (quotes, backslashes, CR, control characters), so each value reads back unchanged."""
    plain = {k: _plain(v) for k, v in sorted(values.items()) if not isinstance(v, dict)}
    tables = {k: _plain(v) for k, v in sorted(values.items()) if isinstance(v, dict)}
    text = tomli_w.dumps({**plain, **tables})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(value: Any) -> Any:
    """TOML has no null and no Path: paths are written as strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    return value
