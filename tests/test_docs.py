"""The user docs stay true: every setting is documented with its real default."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from agent_manager.settings import Settings

DOCS = Path(__file__).parent.parent / "docs"


def test_every_setting_is_documented_with_its_default() -> None:
    text = (DOCS / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", text, re.MULTILINE))
    assert set(rows) == set(Settings.model_fields), "docs/configuration.md table out of date"
    for name, field in Settings.model_fields.items():
        shown = rows[name].strip().strip("`")
        if field.default_factory is None and field.default is not None and not isinstance(field.default, str):
            assert shown.lower() == str(field.default).lower() or float(shown) == float(field.default), name
        elif isinstance(field.default, str):
            assert shown == field.default, name


def test_config_example_is_valid() -> None:
    text = (DOCS / "configuration.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert example
    Settings(**tomllib.loads(example.group(1)))
