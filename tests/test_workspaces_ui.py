"""The changes view and the Projects page in a real headless Chromium (real server, real git)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from playwright.sync_api import expect
from ui_harness import UI
from workspace_helpers import EDIT_SCRIPT, git, make_repo


def setup_project(ui: UI, tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "repo")
    ui.agent("sh-agent", kind="generic", command="sh", args=["-c", "{prompt}"])
    r = ui.api.post("/api/projects", json={"name": "proj", "path": str(repo)})
    assert r.status_code == 201, r.text
    return repo


def test_run_on_a_project_from_the_form_then_review_side_by_side_and_merge(ui: UI, tmp_path: Path) -> None:
    repo = setup_project(ui, tmp_path)
    page = ui.page
    ui.go("/run?agent=sh-agent&project=proj")
    expect(page.get_by_label("Project")).to_have_value("proj")
    code = " && printf 'def f():\\n    return 1\\n' > code.py"
    page.get_by_label("Prompt").fill("Edit the files\n" + EDIT_SCRIPT + code)
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page).to_have_url(re.compile(r"#/runs/run_"))
    diff = page.locator("[data-testid=diff]")
    expect(diff.locator("[data-testid=diff-summary]")).to_contain_text("6 files changed", timeout=30_000)
    files = diff.locator(".diff-files li")
    expect(files).to_have_count(6)
    expect(diff.locator(".diff-files")).to_contain_text("old.txt → renamed.txt")
    expect(diff.locator(".diff-files")).to_contain_text("binary")
    expect(diff.locator("table.diff.split").first).to_be_visible()  # side by side on a desktop
    a_txt = diff.locator(".diff-file[data-path='a.txt']")
    expect(a_txt.locator("td.del")).to_have_text("line 2")
    expect(a_txt.locator("td.add")).to_have_text("line 2 changed")
    expect(diff.locator(".diff-file[data-path='code.py'] .tok-kw").first).to_have_text("def")  # colours
    href = diff.get_by_role("link", name="Download patch").get_attribute("href")
    assert href and href.endswith("/diff?format=patch")
    patch = ui.api.get(href)
    assert patch.status_code == 200 and "GIT binary patch" in patch.text
    diff.get_by_role("button", name="Merge").click()
    expect(diff.locator("[data-testid=diff-summary]")).to_contain_text("merged")
    expect(diff.get_by_role("button", name="Merge")).to_be_disabled()
    assert (repo / "code.py").exists() and git(repo, "status", "--porcelain") == ""


def test_conflict_shows_the_paths_and_discard_works_on_a_phone(phone: UI, tmp_path: Path) -> None:
    ui = phone
    repo = setup_project(ui, tmp_path)
    run = ui.api.post("/api/runs", json={"agent": "sh-agent", "project": "proj",
                                         "prompt": "Edit a\nprintf 'agent\\n' > a.txt"}).json()
    ui.wait_run(run["id"])
    (repo / "a.txt").write_text("user\n")
    git(repo, "commit", "-q", "-am", "user edit")
    page = ui.page
    ui.expected_statuses.add(409)
    ui.go(f"/runs/{run['id']}")
    diff = page.locator("[data-testid=diff]")
    expect(diff.locator("table.diff.unified")).to_be_visible()  # unified on a phone
    expect(diff.locator("tr.add")).to_have_text(re.compile(r"\+agent"))
    diff.get_by_role("button", name="Merge").click()
    error = diff.locator("[data-testid=merge-error]")
    expect(error).to_contain_text("conflict")
    expect(error.locator("li")).to_have_text("a.txt")
    page.once("dialog", lambda d: d.accept())
    diff.get_by_role("button", name="Discard").click()
    expect(diff.locator("[data-testid=diff-summary]")).to_contain_text("discarded")
    assert (repo / "a.txt").read_text() == "user\n"
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390 + 1  # nothing forces a horizontal scroll of the page


def test_projects_page_lists_and_adds_projects_and_shows_open_workspaces(ui: UI, tmp_path: Path) -> None:
    setup_project(ui, tmp_path)
    other = make_repo(tmp_path / "other")
    run = ui.api.post("/api/runs", json={"agent": "sh-agent", "project": "proj",
                                         "prompt": "One file\necho x > x.txt"}).json()
    ui.wait_run(run["id"])
    page = ui.page
    ui.go("/projects")
    expect(page.locator("main h1")).to_have_text("Projects")
    expect(page.locator("[data-testid=projects]")).to_contain_text("proj")
    page.get_by_label("Name").fill("other")
    page.get_by_label("Repository").fill(str(other))
    page.get_by_role("button", name="Add project").click()
    expect(page.locator("[data-testid=projects] tbody tr")).to_have_count(2)
    page.get_by_role("link", name="proj", exact=True).click()
    table = page.locator("[data-testid=workspaces]")
    expect(table).to_contain_text(f"am/{run['id']}")
    expect(table).to_contain_text("1 (+1 −0)")
    table.get_by_role("link", name="run").click()
    expect(page).to_have_url(re.compile(rf"#/runs/{run['id']}"))
    expect(page.locator("[data-testid=diff-summary]")).to_contain_text("1 file changed")


def test_orchestration_and_chat_show_their_changes(ui: UI, tmp_path: Path) -> None:
    setup_project(ui, tmp_path)
    plan = {"name": "two", "steps": [{"id": "a", "agent": "sh-agent", "prompt": "A\necho a > from-a.txt"},
                                     {"id": "b", "agent": "sh-agent", "prompt": "B\necho b > from-b.txt"}]}
    orch = ui.api.post("/api/orchestrations", json={"plan": plan, "project": "proj"}).json()
    page = ui.page
    ui.go(f"/orchestrations/{orch['id']}")
    expect(page.locator("[data-testid=orch-status]")).to_contain_text("succeeded", timeout=30_000)
    diff = page.locator("[data-testid=diff]")
    expect(diff.locator("[data-testid=diff-summary]")).to_contain_text("2 files changed")
    page.locator("main [data-testid=dag] .dag-node[data-step=a]").click()  # a node: that step's changes
    step_changes = page.locator(".step-panel [data-testid=diff]")
    expect(step_changes.locator(".diff-files li")).to_have_text(re.compile("from-a.txt"))
    expect(step_changes.locator("table.diff.unified")).to_be_visible()
    conv = ui.api.post("/api/conversations", json={"title": "chat", "agent": "sh-agent", "project": "proj"}).json()
    posted = ui.api.post(f"/api/conversations/{conv['id']}/messages", json={"content": "echo c > c.txt"}).json()
    ui.wait_run(posted["run"]["id"])
    time.sleep(0.2)
    ui.go(f"/chat/{conv['id']}")
    expect(page.locator("[data-testid=diff] [data-testid=diff-summary]")).to_contain_text("1 file changed")
