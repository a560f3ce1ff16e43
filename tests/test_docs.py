"""The user docs stay true: every setting is documented with its real default."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from agent_manager import plugins, sections
from agent_manager.settings import Settings

DOCS = Path(__file__).parent.parent / "docs"


def test_every_setting_is_documented_with_its_default() -> None:
    text = (DOCS / "configuration.md").read_text().partition(sections.DOCS_BEGIN)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", text, re.MULTILINE))
    assert set(rows) == set(Settings.model_fields), "docs/configuration.md table out of date"
    for name, field in Settings.model_fields.items():
        shown = rows[name].strip().strip("`")
        if field.default_factory is None and field.default is not None and not isinstance(field.default, str):
            assert shown.lower() == str(field.default).lower() or float(shown) == float(field.default), name
        elif isinstance(field.default, str):
            assert shown == field.default, name


def test_backend_sections_are_documented_as_their_models_say() -> None:
    """The tables of the backends' own settings are generated from their models: a field added,
    renamed, or given another default or description without regenerating them fails here."""
    text = (DOCS / "configuration.md").read_text()
    assert text == sections.with_reference(text), (
        "docs/configuration.md's backend sections are out of date: run "
        "python -m agent_manager.sections docs/configuration.md")
    builtin = {entry.name for entry in plugins.backend_entries() if entry.builtin}
    assert {"sandbox", "daytona"} <= builtin
    for name, model in sections.section_models().items():
        if name not in builtin:
            continue  # a plugin installed into this venv documents its own settings
        assert f"### `[{name}]`" in text
        for field in model.model_fields:
            assert f"| `{field}` | `{sections.env_prefix(name)}{field.upper()}`" in text, (name, field)


def test_config_example_is_valid() -> None:
    text = (DOCS / "configuration.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert example
    Settings(**tomllib.loads(example.group(1)))


ROOT = DOCS.parent


def test_ui_doc_lists_only_pages_that_exist() -> None:
    from agent_manager.web.pages import available_pages

    text = (DOCS / "ui.md").read_text()
    assert "not available" not in text
    for page in ("plans", "files", "users"):
        assert page in available_pages()
        assert f"`#/{page}" in text


def test_configuration_doc_gives_the_real_home_option() -> None:
    from click.testing import CliRunner

    from agent_manager.cli import main

    text = (DOCS / "configuration.md").read_text()
    assert "serve --home" not in text and "--no-auth`, `--home`" not in text
    assert "agent-manager --home DIR serve" in text
    # ... and that is what the CLI really takes.
    assert "--home" in CliRunner().invoke(main, ["--help"]).output
    assert "--home" not in CliRunner().invoke(main, ["serve", "--help"]).output


def test_security_doc_does_not_claim_a_one_time_token_url() -> None:
    text = (DOCS / "security.md").read_text()
    assert "only once" not in text


def test_readme_curl_line_does_not_hard_code_the_port() -> None:
    for line in (ROOT / "README.md").read_text().splitlines():
        if "curl" in line:
            assert ":8765" not in line, line
            assert "agent-manager url" in line


def test_every_environment_variable_the_cli_reads_is_documented() -> None:
    """AGENT_MANAGER_TOKEN was read by every client command and mentioned nowhere."""
    cli = Path(__file__).parent.parent / "agent_manager" / "cli"
    names = {m for f in cli.glob("*.py") for m in re.findall(r'"(AGENT_MANAGER_[A-Z_]+)"', f.read_text())}
    assert "AGENT_MANAGER_TOKEN" in names
    docs = "".join(f.read_text() for f in DOCS.glob("*.md")) + (DOCS.parent / "README.md").read_text()
    assert not {n for n in names if n not in docs}, "undocumented environment variables"


def test_plugin_install_lines_use_the_venv_that_make_serve_builds() -> None:
    """A bare `pip install ./examples/...` (as the docs once said) fails on Debian with
    "externally-managed-environment", or installs into a Python the service never reads."""
    bare = re.compile(r"(?<!\.venv/bin/)\bpip install (?:\./examples/|agent-manager-)")
    texts = [ROOT / "README.md", *DOCS.glob("*.md"), *(ROOT / "examples").glob("*/README.md")]
    hits = [f"{path.relative_to(ROOT)}: {m.group(0)}" for path in texts for m in bare.finditer(path.read_text())]
    assert not hits, hits
    assert ".venv/bin/pip install ./examples/agent-manager-nice" in (ROOT / "README.md").read_text()
