"""The xterm.js terminal in a real Chromium: typing reaches the shell and its echo shows up,
resizing the window resizes the PTY, the phone key row sends its keys, all under the strict CSP."""

from __future__ import annotations

import re

from playwright.sync_api import expect
from ui_harness import UI


def screen_text(ui: UI) -> str:
    return ui.page.locator("[data-testid=terminal] .xterm-rows").inner_text()


def wait_screen(ui: UI, pattern: str) -> None:
    expect(ui.page.locator("[data-testid=terminal] .xterm-rows")).to_contain_text(re.compile(pattern),
                                                                                 timeout=15_000)


def test_type_into_the_terminal_and_read_the_echo(ui: UI) -> None:
    agent = ui.agent("echoer", command="echo", args=["{prompt}"], backend="local")
    run = ui.run(agent["name"], "hi")
    ui.wait_run(run["id"])
    page = ui.page
    ui.go(f"/runs/{run['id']}")
    page.get_by_role("link", name="Terminal", exact=True).click()
    expect(page.get_by_test_id("terminal-status")).to_have_text("live")
    page.locator("[data-testid=terminal] .xterm").click()
    page.keyboard.type("echo typed-$((6*7)); pwd\n")
    wait_screen(ui, r"typed-42")
    assert f"workspaces/agents/{agent['id']}" in screen_text(ui)  # the agent's own directory
    # the xterm.js styles took effect although the CSP forbids inline <style> (adoptedStyleSheets)
    assert page.evaluate("document.adoptedStyleSheets.length") >= 1
    # the PTY follows the window
    page.set_viewport_size({"width": 700, "height": 600})
    page.wait_for_timeout(400)
    page.keyboard.type("stty size\n")
    wait_screen(ui, r"\d+ \d+")
    sizes = re.findall(r"(\d+) (\d+)", screen_text(ui))
    assert sizes and int(sizes[-1][1]) < 100, sizes  # columns: 1280 px wide gave far more
    # Paste types the clipboard into the terminal; Copy puts the selection on the clipboard
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=ui.server.url)
    page.evaluate("navigator.clipboard.writeText('echo pasted-$((3*3))')")
    page.get_by_role("button", name="Paste").click()
    wait_screen(ui, r"# echo pasted-\$\(\(3\*3\)\)")
    page.keyboard.press("Enter")
    wait_screen(ui, r"pasted-\$\(\(3\*3\)\)pasted-9")  # the pasted line, then its output
    box = page.locator("[data-testid=terminal] .xterm-rows span", has_text="pasted-9").last.bounding_box()
    assert box is not None
    page.mouse.dblclick(box["x"] + box["width"] - 4, box["y"] + box["height"] / 2)  # xterm selects the word
    page.get_by_role("button", name="Copy").click()
    assert "pasted" in page.evaluate("navigator.clipboard.readText()")
    # leaving detaches; coming back reattaches with the scroll-back
    terminal_url = page.url
    ui.go("/terminal")
    expect(page.get_by_role("link", name="Attach")).to_be_visible()
    page.goto(terminal_url)
    expect(page.get_by_test_id("terminal-status")).to_have_text("live")
    wait_screen(ui, r"typed-42")
    page.get_by_role("button", name="Close terminal").click()
    expect(page.get_by_role("heading", name="Terminals", exact=True)).to_be_visible()
    assert ui.api.get("/api/terminals").json() == []


def test_phone_key_row(phone: UI) -> None:
    page = phone.page
    phone.go("/terminal")
    page.get_by_label("Backend").select_option("sandbox")
    page.get_by_role("button", name="Open terminal").click()
    expect(page.get_by_test_id("terminal-status")).to_have_text("live")
    keys = page.get_by_role("toolbar", name="Extra keys")
    for name in ("Esc", "Tab", "Ctrl", "←", "↑", "↓", "→"):
        expect(keys.get_by_role("button", name=name, exact=True)).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.locator("[data-testid=terminal] .xterm").click()
    page.keyboard.type("sleep 30")
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)
    keys.get_by_role("button", name="Ctrl").click()  # Ctrl, then "c": interrupts the sleep
    page.keyboard.type("c")
    page.keyboard.type("echo after-12")
    keys.get_by_role("button", name="←").click()  # the cursor moves left; typing inserts there
    page.keyboard.type("0")
    page.keyboard.press("Enter")
    wait_screen(phone, r"echo after-102.*after-102")  # the command line, then its output
    assert "^C" in screen_text(phone)
    phone.api.delete(f"/api/terminals/{page.url.rsplit('/', 1)[1]}")
