"""Backend settings sections: each backend plugin declares its own typed settings model.

A backend's knobs live in its own section (``BackendPlugin.settings_model``, a pydantic model)
instead of in the service's ``Settings``: the service never needs to know them, yet they are
loaded, validated, shown (``GET /api/settings``, the Settings page), changed
(``PATCH /api/settings``) and documented (docs/configuration.md) like every other setting.

Names, for a section ``daytona`` with a field ``api_key``:

* config.toml: ``[daytona]`` then ``api_key = "..."`` (what the service writes); the older flat
  form ``daytona_api_key = "..."`` still loads, and is moved into the table at the next write,
* environment: ``AGENT_MANAGER_DAYTONA_API_KEY``, plus any name the field lists as
  ``json_schema_extra={"env": "DAYTONA_API_KEY"}`` (a tool's own variable; ours wins),
* API and messages: ``daytona.api_key``.

A field whose type is ``SecretStr`` is write-only in the API, like every secret.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, get_args

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

if TYPE_CHECKING:
    from agent_manager.plugins import BackendPlugin

log = logging.getLogger("agent_manager.sections")
ENV_PREFIX = "AGENT_MANAGER_"


# Top-level keys of GET /api/settings besides the settings themselves: no section may take them.
RESERVED = frozenset({"sections", "section_info", "mutable", "restart_required", "from_env", "listening"})


def plugins_with_sections() -> dict[str, BackendPlugin]:
    """The installed backends that declare a usable settings section, by name (the registry's
    order). A section that is no pydantic model, or whose name is taken by a service setting,
    is left out and logged: the backend still loads, its settings keep their defaults."""
    from agent_manager import plugins
    from agent_manager.settings import Settings

    found = {}
    # Flat names (config keys, and AGENT_MANAGER_ variables) already spoken for: a section
    # ``daytona_api`` with a field ``key`` would otherwise read AGENT_MANAGER_DAYTONA_API_KEY,
    # Daytona's key, and a section ``heavy`` with ``cpu`` the service's heavy_cpu.
    taken = {key: "a service setting" for key in Settings.model_fields}
    for name, plugin in plugins.backends().items():
        model = plugin.settings_model
        if model is None:
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            _refuse(name, f"its settings_model is not a pydantic model ({model!r})")
            continue
        if name in Settings.model_fields or name in RESERVED:
            _refuse(name, f"its name {name!r} is taken by a service setting, so it can have no section")
            continue
        flat = {flat_key(name, field) for field in model.model_fields}
        clash = sorted(flat & set(taken))
        if clash:
            _refuse(name, f"its fields would share the names {', '.join(clash)} (config keys and "
                          f"{ENV_PREFIX}* variables) with {taken[clash[0]]}; rename the backend or the fields")
            continue
        taken.update(dict.fromkeys(flat, f"the {name} section"))
        found[name] = plugin
    return found


def _refuse(name: str, why: str) -> None:
    if (name, why) not in _refused:
        _refused.add((name, why))
        log.error("the %s backend's settings section is ignored: %s", name, why)


_refused: set[tuple[str, str]] = set()


def section_models() -> dict[str, type[BaseModel]]:
    """Section name → its model, for every installed backend that declares one."""
    return {name: plugin.settings_model for name, plugin in plugins_with_sections().items()
            if plugin.settings_model is not None}


def stem(section: str) -> str:
    """The section's name as it starts flat keys and variables (``-`` is not allowed there)."""
    return section.replace("-", "_")


def env_prefix(section: str) -> str:
    return f"{ENV_PREFIX}{stem(section).upper()}_"


def flat_key(section: str, field: str) -> str:
    """The older flat config.toml key (and the env suffix) of a section's field."""
    return f"{stem(section)}_{field}"


def own_env(info: FieldInfo) -> str | None:
    """Another program's variable for this field (e.g. DAYTONA_API_KEY), if the field names one."""
    extra = info.json_schema_extra
    value = extra.get("env") if isinstance(extra, dict) else None
    return value if isinstance(value, str) else None


def is_secret(info: FieldInfo, name: str | None = None) -> bool:
    """A ``SecretStr`` field; and, given the field's ``name``, a plain text field named like a
    credential (``api_token: str``): a plugin author's slip must not show it to every user."""
    annotation = info.annotation
    if annotation is SecretStr or SecretStr in get_args(annotation):
        return True
    text = annotation is str or (bool(get_args(annotation)) and set(get_args(annotation)) <= {str, type(None)})
    if name is None or not text:
        return False
    from agent_manager.models import SECRET_NAME_RE  # here: client commands never need the API models

    return SECRET_NAME_RE.search(name) is not None


def split_flat(values: Mapping[str, Any], core: Mapping[str, Any],
               models: Mapping[str, type[BaseModel]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``values`` into the core settings and each section's values.

    A section's values come as a table (``{"daytona": {"api_key": ...}}``, or the section's
    model itself) or as flat keys (``daytona_api_key``); the table wins where both give a
    field. Keys that are neither stay in the core part (the core model rejects unknown ones).
    A section given as something other than a table is passed on as it is, for its model to
    reject.
    """
    rest: dict[str, Any] = {}
    sections: dict[str, Any] = {name: {} for name in models}
    tables: dict[str, Any] = {}
    for key, value in values.items():
        if key in models and key not in core:
            tables[key] = value.model_dump() if isinstance(value, BaseModel) else value
            continue
        owner = None if key in core else flat_owner(key, models)
        if owner is None:
            rest[key] = value
        else:
            sections[owner[0]][owner[1]] = value
    for name, table in tables.items():
        sections[name] = {**sections[name], **table} if isinstance(table, Mapping) else table
    return rest, sections


def flat_owner(key: str, models: Mapping[str, type[BaseModel]]) -> tuple[str, str] | None:
    """(section, field) that the flat key ``key`` names, if any."""
    for name, model in models.items():
        prefix = stem(name) + "_"
        if key.startswith(prefix) and key[len(prefix):] in model.model_fields:
            return name, key[len(prefix):]
    return None


def describe(model: type[BaseModel]) -> list[dict[str, Any]]:
    """What a UI or a docs table needs to know about each field, from the model alone:
    name, type (``boolean``, ``integer``, ``number``, ``string``, ``list``, ``secret``), default,
    description, choices, bounds, whether it may be empty (null), and its extra variable."""
    schema = model.model_json_schema()
    props = schema.get("properties", {})
    out = []
    for name, info in model.model_fields.items():
        prop = _without_null(props.get(name, {}), schema)
        kind = "secret" if is_secret(info, name) else _kind(prop)
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = None  # a secret's default is never shown
        entry: dict[str, Any] = {
            "name": name, "type": kind, "default": _plain(default), "description": info.description or "",
            "nullable": _nullable(props.get(name, {})), "choices": prop.get("enum"),
            "minimum": prop.get("minimum", prop.get("exclusiveMinimum")),
            "maximum": prop.get("maximum", prop.get("exclusiveMaximum")),
            "env": own_env(info)}
        out.append(entry)
    return out


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def _nullable(prop: Mapping[str, Any]) -> bool:
    return any(option.get("type") == "null" for option in prop.get("anyOf", []))


def _without_null(prop: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """The field's schema without the ``null`` alternative, with a ``$ref`` (an enum) resolved."""
    options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"]
    chosen = dict(options[0]) if options else {}
    ref = chosen.pop("$ref", None)
    if isinstance(ref, str):
        chosen.update(schema.get("$defs", {}).get(ref.rsplit("/", 1)[-1], {}))
    return {**chosen, **{k: v for k, v in prop.items() if k not in ("anyOf", "$ref")}}


def _kind(prop: Mapping[str, Any]) -> str:
    kind = prop.get("type")
    if kind == "array":
        return "list"
    if isinstance(kind, str) and kind in ("boolean", "integer", "number", "string"):
        return kind
    if "enum" in prop:
        return "string"
    return "string"


def docs_table(title: str, section: str, model: type[BaseModel]) -> str:
    """The docs/configuration.md table of one section (tests/test_docs.py keeps it in sync)."""
    lines = [f"### `[{section}]` — {title}", "",
             "| setting | environment | default | what it does |", "|---|---|---|---|"]
    for field in describe(model):
        variables = f"`{env_prefix(section)}{field['name'].upper()}`"
        if field["env"]:
            variables += f", `{field['env']}`"
        default = field["default"]
        shown = "—" if default is None else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        what = field["description"].replace("|", "\\|").replace("\n", " ")
        if field["type"] == "secret":
            what += " (write-only in the API)"
        if field["choices"]:
            what += " (one of " + ", ".join(f"`{c}`" for c in field["choices"]) + ")"
        lines.append(f"| `{field['name']}` | {variables} | {shown} | {what} |")
    return "\n".join(lines)


DOCS_BEGIN = ("<!-- backend sections: generated from each backend's settings model by "
              "`python -m agent_manager.sections docs/configuration.md`; tests/test_docs.py checks them -->")
DOCS_END = "<!-- end of backend sections -->"


def reference(builtin_only: bool = False) -> str:
    """The tables of every installed backend's section (only the built-in ones: what
    docs/configuration.md shows)."""
    from agent_manager import plugins

    builtin = {entry.name for entry in plugins.backend_entries() if entry.builtin}
    return "\n\n".join(docs_table(plugin.title, name, model)
                       for name, plugin in plugins_with_sections().items()
                       if (model := plugin.settings_model) is not None and (name in builtin or not builtin_only))


def with_reference(text: str) -> str:
    """``text`` (docs/configuration.md) with its generated block replaced by the current tables."""
    head, begin, rest = text.partition(DOCS_BEGIN)
    _, end, tail = rest.partition(DOCS_END)
    if not begin or not end:
        raise ValueError("the generated block's markers are missing")
    return f"{head}{DOCS_BEGIN}\n\n{reference(builtin_only=True)}\n\n{DOCS_END}{tail}"


def main(argv: list[str]) -> int:
    """``python -m agent_manager.sections`` prints the sections of every installed backend
    (third-party ones included); given a file, it rewrites that file's generated block."""
    from pathlib import Path

    if not argv:
        print(reference())
        return 0
    path = Path(argv[0])
    path.write_text(with_reference(path.read_text()))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
