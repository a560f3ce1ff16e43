"""The history page in a real headless Chromium against a real server (harness: ui_harness.py):
search, filters kept in the URL, conversations, pages."""

from __future__ import annotations

import re

from playwright.sync_api import expect
from ui_harness import UI


def test_history_search_filters_and_conversations(ui: UI) -> None:
    page = ui.page
    ui.agent("claude", kind="claude")
    ok = ui.run("claude", "zebra crossing")
    bad = ui.run("claude", "yak shaving FAIL")
    ui.wait_run(ok["id"])
    ui.wait_run(bad["id"])
    conv = ui.api.post("/api/conversations", json={"title": "Pelican facts", "agent": "claude"}).json()
    ui.api.post("/api/conversations", json={"title": "Other things", "agent": "claude"})
    ui.go("/history")
    expect(page.locator("table.runs tbody tr")).to_have_count(2)
    page.get_by_label("Search").fill("zebra")
    page.get_by_label("Search").press("Enter")
    expect(page.locator("table.runs tbody tr")).to_have_count(1)
    expect(page.locator("table.runs")).to_contain_text("zebra crossing")
    page.get_by_label("Search").fill("")
    page.get_by_label("Search").press("Enter")
    expect(page.locator("table.runs tbody tr")).to_have_count(2)
    page.get_by_label("Status").select_option("failed")
    expect(page.locator("table.runs tbody tr")).to_have_count(1)
    expect(page.locator("table.runs")).to_contain_text("yak shaving")
    page.reload()  # the filters live in the URL
    expect(page.get_by_label("Status")).to_have_value("failed")
    expect(page.locator("main")).not_to_contain_text("null")
    page.get_by_role("tab", name="Conversations").click()
    # The conversations page has replaced the runs page (else, on a loaded machine, "pelican"
    # went into the runs page's search box and Enter searched runs).
    expect(page.get_by_placeholder("Words in titles and messages")).to_be_visible()
    expect(page.locator(".results li")).to_have_count(2)
    page.get_by_label("Search").fill("pelican")
    page.get_by_label("Search").press("Enter")
    expect(page.locator(".results li")).to_have_count(1)
    page.locator(".results li a").click()
    expect(page).to_have_url(re.compile(f"#/chat/{conv['id']}"))


def test_history_is_paginated(ui: UI) -> None:
    page = ui.page
    ui.agent("echo", kind="generic", command="echo")
    runs = [ui.run("echo", f"number {i}") for i in range(23)]
    for run in runs:
        ui.wait_run(run["id"])
    ui.go("/history")
    expect(page.get_by_test_id("total")).to_have_text("23 runs")
    expect(page.locator("table.runs tbody tr")).to_have_count(20)
    expect(page.locator("table.runs tbody tr").first).to_contain_text("number 22")
    expect(page.locator(".pager")).to_contain_text("Page 1 of 2")
    page.get_by_role("button", name="Older →").click()
    expect(page.locator("table.runs tbody tr")).to_have_count(3)
    expect(page.locator("table.runs tbody tr").last).to_contain_text("number 0")
