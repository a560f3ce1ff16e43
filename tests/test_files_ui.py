"""The file browser and the users page in a real Chromium against a real server."""

from __future__ import annotations

from pathlib import Path

import httpx
from playwright.sync_api import expect
from ui_harness import UI


def test_browse_and_edit_a_file(ui: UI, tmp_path: Path) -> None:
    root = tmp_path / "work"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "readme.md").write_text("first version\n")
    (root / "top.txt").write_text("top\n")
    ui.agent("writer", command="echo", working_dir=str(root))
    page = ui.page
    ui.go("/files")
    page.get_by_label("Agent", exact=True).select_option("writer")
    listing = page.get_by_role("table", name="Directory listing")
    expect(listing).to_contain_text("docs/")
    expect(listing).to_contain_text("top.txt")
    listing.get_by_role("link", name="docs/").click()
    page.get_by_role("link", name="readme.md").click()
    editor = page.get_by_label("Content of docs/readme.md")
    expect(editor).to_have_value("first version\n")
    editor.fill("second version ✓\n")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Saved 19 B.")).to_be_visible()
    assert (root / "docs" / "readme.md").read_text() == "second version ✓\n"
    # a new file from the directory view
    page.get_by_role("link", name="docs").click()
    page.get_by_label("New file").fill("notes.txt")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_label("Content of docs/notes.txt")).to_have_value("")
    assert (root / "docs" / "notes.txt").exists()


def test_users_page_creates_a_user_whose_token_works(ui: UI) -> None:
    page = ui.page
    ui.go("/users")
    page.get_by_label("Name", exact=True).fill("robin")
    page.get_by_label("Trusted").check()
    page.get_by_role("button", name="Create user").click()
    token = page.get_by_test_id("new-token").inner_text()
    assert token.startswith("amu_")
    row = page.locator("tr[data-user=robin]")
    expect(row).to_contain_text("user")
    expect(row.get_by_label("robin is trusted")).to_be_checked()
    me = httpx.get(f"{ui.server.url}/api/users/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["name"] == "robin" and me["trusted"] is True
    row.get_by_label("robin is trusted").uncheck()
    expect(page.get_by_role("table", name="Audit log")).to_contain_text("user.update")
    assert httpx.get(f"{ui.server.url}/api/users/me", headers={"Authorization": f"Bearer {token}"}).json()[
        "trusted"] is False
