"""The web UI in a real headless Chromium against a real server (harness: ui_harness.py)."""

from __future__ import annotations

import re
import sqlite3
import sys

import httpx
from conftest import LiveServer
from playwright.sync_api import Browser, expect
from ui_harness import UI, output_of

TEN_LINES = "import time\nfor i in range(10):\n    print(f'line {i}', flush=True)\n    time.sleep(0.4)\n"


# ---- agents ---------------------------------------------------------------------------------


def test_unauthenticated_browser_gets_the_login_page(browser: Browser, live_server: LiveServer) -> None:
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(live_server.url + "/")
    assert response is not None and response.status == 401
    expect(page.get_by_label("Token")).to_be_visible()
    context.close()


def test_agent_form_shows_the_api_validation_error_then_creates(ui: UI) -> None:
    ui.expected_statuses.add(422)
    page = ui.page
    ui.go("/agents/new")
    page.get_by_label("Name", exact=True).fill("bad name!")
    page.get_by_label("Command").fill(sys.executable)
    page.get_by_role("button", name="Create agent").click()
    name_row = page.locator(".field", has=page.get_by_label("Name", exact=True))
    expect(name_row.locator(".field-error")).to_contain_text("Use only letters, digits")
    expect(name_row.locator(".field-error")).not_to_contain_text("pattern")
    expect(page.locator(".form-summary .alert")).to_have_count(0)  # said once, under the field
    expect(page.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")

    page.get_by_label("Name", exact=True).fill("lister")
    page.get_by_role("button", name="Add argument").click()
    page.get_by_label("Argument", exact=True).nth(0).fill("-c")
    page.get_by_role("button", name="Add argument").click()
    page.get_by_label("Argument", exact=True).nth(1).fill("print('hi')")
    page.get_by_role("button", name="Add variable").click()
    page.get_by_label("Variable name").fill("API_TOKEN")
    page.get_by_label("Variable value").fill("s3cret")
    page.get_by_label("Working directory").fill("relative/dir")
    page.get_by_role("button", name="Create agent").click()
    wd_row = page.locator(".field", has=page.get_by_label("Working directory"))
    expect(wd_row.locator(".field-error")).to_contain_text("absolute")
    expect(name_row.locator(".field-error")).to_be_empty()

    page.get_by_label("Working directory").fill("")
    page.get_by_label("Backend").select_option("local")
    page.get_by_label("Timeout (seconds)").fill("42")
    page.get_by_label("Trusted").uncheck()
    page.get_by_role("button", name="Create agent").click()
    expect(page.locator("[data-agent=lister]")).to_be_visible()
    agent = ui.api.get("/api/agents/lister").json()
    assert agent["args"] == ["-c", "print('hi')"]
    assert agent["env"] == {"API_TOKEN": "********"}
    assert (agent["backend"], agent["timeout_s"], agent["trusted"]) == ("local", 42, False)

    # Edit: the masked secret is sent back unchanged and the stored value is kept.
    page.locator("[data-agent=lister]").get_by_role("link", name="Edit").click()
    expect(page.get_by_label("Variable value")).to_have_value("********")
    page.get_by_label("Model").fill("tiny-1")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("[data-agent=lister]")).to_contain_text("tiny-1")
    run = ui.run("lister", "x")
    assert ui.wait_run(run["id"])["status"] == "succeeded"


def test_agent_form_with_the_keyboard_only(ui: UI) -> None:
    page = ui.page
    ui.go("/agents/new")
    expect(page.get_by_label("Name", exact=True)).to_be_focused()
    page.keyboard.type("keyboarder")
    page.keyboard.press("Tab")  # kind
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Tab")  # command
    expect(page.get_by_label("Command")).to_be_focused()
    page.keyboard.type("echo")
    page.keyboard.press("Tab")  # "Add argument"
    expect(page.get_by_role("button", name="Add argument")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Argument", exact=True)).to_be_focused()
    page.keyboard.type("--flag")
    page.keyboard.press("Enter")  # Enter in a field submits the form
    expect(page.locator("[data-agent=keyboarder]")).to_be_visible()
    assert ui.api.get("/api/agents/keyboarder").json()["args"] == ["--flag"]


# ---- runs -----------------------------------------------------------------------------------


def test_run_streams_lines_while_running_and_shows_the_result(ui: UI) -> None:
    page = ui.page
    ui.agent("counter", kind="generic", command="python3", args=["-u", "-c", TEN_LINES])
    ui.go("/run?agent=counter")
    page.get_by_label("Prompt").fill("count")
    page.get_by_label("Backend").select_option("local")
    page.get_by_label("Prompt").press("Enter")
    expect(page.locator("[data-testid=output]")).to_contain_text("line 0")
    run_id = re.search(r"#/runs/([^?]+)", page.url).group(1)  # type: ignore[union-attr]
    assert ui.status(run_id) == "running"  # seen live, not after the fact
    expect(page.locator("[data-testid=run-status]")).to_contain_text("running")
    expect(page.locator("[data-testid=run-status]")).to_contain_text("succeeded", timeout=20_000)
    expect(page.locator("[data-testid=exit-code]")).to_have_text("0")
    expect(page.locator(".run-backend")).to_contain_text("local")
    expect(page.locator(".route-reason")).to_contain_text("local")
    expect(page.locator("[data-testid=duration]")).not_to_have_text("—")
    text = output_of(page)
    assert [text.count(f"line {i}\n") for i in range(10)] == [1] * 10
    expect(page.locator("[data-testid=cancel]")).to_be_hidden()


def test_cancel_a_long_run(ui: UI) -> None:
    page = ui.page
    ui.agent("sleeper", kind="generic", command="python3",
             args=["-u", "-c", "import time\nprint('started', flush=True)\ntime.sleep(60)"])
    ui.go("/run?agent=sleeper")
    page.get_by_label("Prompt").fill("sleep")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator("[data-testid=output]")).to_contain_text("started")
    page.once("dialog", lambda dialog: dialog.accept())  # cancel asks first
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("[data-testid=run-status]")).to_contain_text("cancelled")
    expect(page.locator("[data-testid=exit-code]")).to_have_text("— (cancelled)")  # not "-2"
    expect(page.locator(".run-error .alert.error")).to_have_count(0)  # the user's own cancel is no error
    run_id = re.search(r"#/runs/([^?]+)", page.url).group(1)  # type: ignore[union-attr]
    assert ui.status(run_id) == "cancelled"


def test_claude_run_shows_messages_tools_and_usage(ui: UI) -> None:
    page = ui.page
    ui.agent("claude", kind="claude")
    run = ui.run("claude", "look around TOOL")
    ui.go(f"/runs/{run['id']}")
    expect(page.locator("[data-testid=tool]")).to_contain_text("Bash")
    expect(page.locator("[data-testid=tool]")).to_contain_text("file.txt")
    expect(page.locator("[data-testid=message]").last).to_contain_text("Echo: look around TOOL")
    expect(page.locator("[data-testid=usage]")).to_contain_text("$0.0123")
    failed = ui.run("claude", "please FAIL")
    ui.go(f"/runs/{failed['id']}")
    expect(page.locator("[data-testid=run-status]")).to_contain_text("failed")
    expect(page.locator("[data-testid=exit-code]")).to_have_text("1")
    expect(page.locator("[data-testid=error-event]")).to_contain_text("simulated failure")


def test_reload_mid_stream_replays_every_line_once(ui: UI) -> None:
    page = ui.page
    ui.agent("counter", kind="generic", command="python3", args=["-u", "-c", TEN_LINES])
    run = ui.run("counter", "count")
    ui.go(f"/runs/{run['id']}")
    expect(page.locator("[data-testid=output]")).to_contain_text("line 2")
    assert ui.status(run["id"]) == "running"
    page.reload()
    expect(page.locator("[data-testid=output]")).to_contain_text("line 3")
    expect(page.locator("[data-testid=run-status]")).to_contain_text("succeeded", timeout=20_000)
    text = output_of(page)
    assert [text.count(f"line {i}\n") for i in range(10)] == [1] * 10


def test_sse_helper_dedupes_and_resumes_after_a_drop(ui: UI) -> None:
    """follow() against a scripted EventSource: a browser-style replay after a reconnect is
    deduplicated by seq, and when the browser gives up we reopen with ?after=<last seq>."""
    result = ui.page.evaluate("""async () => {
      const { follow } = await import('/static/lib/api.js');
      const opened = [];
      class FakeES {
        static CONNECTING = 0; static OPEN = 1; static CLOSED = 2;
        constructor(url) { this.url = url; this.readyState = 0; this.handlers = {}; opened.push(this); }
        addEventListener(type, fn) { (this.handlers[type] ||= []).push(fn); }
        close() { this.readyState = 2; }
        emit(type, seq, data) {
          const ev = new MessageEvent(type, { data: JSON.stringify(data), lastEventId: String(seq) });
          (this.handlers[type] || []).forEach((fn) => fn(ev));
          if (type === 'message' && this.onmessage) this.onmessage(ev);
        }
      }
      const real = window.EventSource;
      window.EventSource = FakeES;
      const seen = [];
      try {
        follow('/api/runs/x/events', { onEvent: (type, data, seq) => seen.push([type, seq, data.text || null]) });
        const a = opened[0];
        a.emit('output', 1, { text: 'one' }); a.emit('output', 2, { text: 'two' });
        a.readyState = 0; a.onerror();                      // dropped: the browser reconnects itself...
        a.emit('output', 1, { text: 'one' }); a.emit('output', 2, { text: 'two' });  // ...and may replay
        a.emit('message', 3, { text: 'hi' });
        a.readyState = 2; a.onerror();                      // the browser gave up
        await new Promise((r) => setTimeout(r, 1200));
        const b = opened[1];
        b.emit('message', 3, { text: 'hi' }); b.emit('output', 4, { text: 'four' });
        b.emit('run.finished', 5, { status: 'succeeded' });
        return { seen, urls: opened.map((s) => s.url), closed: b.readyState };
      } finally { window.EventSource = real; }
    }""")
    assert [s[1] for s in result["seen"]] == [1, 2, 3, 4, 5]
    assert result["urls"] == ["/api/runs/x/events", "/api/runs/x/events?after=3"]
    assert result["closed"] == 2


# ---- chat -----------------------------------------------------------------------------------


def test_two_turn_chat_with_claude_streams_and_survives_a_reload(ui: UI) -> None:
    page = ui.page
    ui.agent("claude", kind="claude")
    ui.go("/chat?agent=claude")
    page.get_by_label("Message", exact=True).fill("hello there SLEEP=2")
    page.get_by_label("Message", exact=True).press("Enter")
    streaming = page.locator(".msg.assistant.streaming")
    expect(streaming).to_contain_text("Working on it.")  # the reply streams while the run runs
    runs = ui.api.get("/api/runs").json()["items"]
    assert runs[0]["status"] == "running"
    expect(page.locator(".msg.assistant").last).to_contain_text("Echo: hello there", timeout=20_000)
    expect(streaming).to_have_count(0)

    page.get_by_label("Message", exact=True).fill("second turn")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(page.locator(".msg.assistant").last).to_contain_text("[resumed ")
    expect(page.locator(".msg.assistant").last).to_contain_text("Echo: second turn")
    # the answer text arrives before the run ends: reload once the turn is over, or the page
    # rightly resumes following it and refuses a new message until it ends
    expect(streaming).to_have_count(0)

    page.reload()
    expect(page.locator(".msg")).to_have_count(4)
    expect(streaming).to_have_count(0)
    page.get_by_label("Message", exact=True).fill("third after reload")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(page.locator(".msg.assistant").last).to_contain_text("Echo: third after reload")
    expect(page.locator(".msg.assistant").last).to_contain_text("[resumed ")
    expect(page.locator(".chat-list")).to_contain_text("hello there")


def test_agent_output_is_shown_as_text_never_executed(ui: UI) -> None:
    page = ui.page
    payload = ("print('<script>window.__pwned=1</script>')\n"
               "print('<img src=x onerror=\"window.__pwned=2\">')\n"
               "print('[click me](javascript:window.__pwned=3) **bold** <b>raw</b>')\n"
               "print('```html\\n<iframe src=javascript:window.__pwned=4></iframe>\\n```')\n")
    ui.agent("evil", kind="generic", command="python3", args=["-u", "-c", payload])
    ui.agent("claude", kind="claude")
    # The raw run view.
    run = ui.run("evil", "go")
    ui.go(f"/runs/{run['id']}")
    expect(page.locator("[data-testid=run-status]")).to_contain_text("succeeded")
    expect(page.locator("[data-testid=output]")).to_contain_text("<script>window.__pwned=1</script>")
    expect(page.locator("[data-testid=output]")).to_contain_text('<img src=x onerror="window.__pwned=2">')
    # The chat renders Markdown: still text, links only for http(s).
    ui.go("/chat?agent=evil")
    page.get_by_label("Message", exact=True).fill("hi")
    page.get_by_label("Message", exact=True).press("Enter")
    reply = page.locator(".msg.assistant").last
    expect(reply).to_contain_text("<script>window.__pwned=1</script>")
    expect(reply).to_contain_text("<b>raw</b>")
    expect(reply.locator("strong")).to_have_text("bold")
    expect(reply.locator("pre code")).to_contain_text("<iframe")
    # Claude echoes the prompt: the user's own HTML is inert as well.
    ui.go("/chat?agent=claude")
    page.get_by_label("Message", exact=True).fill("<img src=x onerror=window.__pwned=5> see [x](https://example.org/a)")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(page.locator(".msg.assistant").last).to_contain_text("Echo: <img src=x onerror=window.__pwned=5>")
    link = page.locator(".msg.assistant").last.locator("a[href^='https://example.org']")
    expect(link).to_have_attribute("rel", re.compile("noopener"))
    assert page.evaluate("window.__pwned") is None
    assert page.locator("main img, main iframe, main script, a[href^='javascript']").count() == 0


# ---- settings, navigation (history: test_ui_history.py) -------------------------------------


def test_settings_show_and_save_with_api_errors(ui: UI) -> None:
    ui.expected_statuses.add(422)
    page = ui.page
    ui.go("/settings")
    # The servers here run `serve --port 0`: the page names the port it got, not "127.0.0.1:0".
    expect(page.get_by_text(f"listening on {ui.server.url} ")).to_be_visible()
    assert ui.api.get("/api/settings").json()["listening"] == ui.server.url
    page.get_by_label("Execution mode").select_option("local")
    page.get_by_label("Stall timeout (s)").fill("-5")
    page.get_by_role("button", name="Save settings").click()
    row = page.locator(".field", has=page.get_by_label("Stall timeout (s)"))
    expect(row.locator(".field-error")).to_have_text("Must be 0 or more.")
    page.get_by_label("Stall timeout (s)").fill("30")
    # Backend sections are drawn from the API's description of their models.
    daytona = page.locator("fieldset[data-section=daytona]")
    expect(daytona.locator("legend")).to_have_text("daytona (cloud)")
    daytona.get_by_label("API key").fill("dtn-secret")
    memory_row = page.locator("fieldset[data-section=sandbox] .field", has=page.get_by_label("Memory (MB)", exact=True))
    memory = memory_row.get_by_label("Memory (MB)", exact=True)
    expect(memory).to_have_attribute("min", "16")
    expect(memory_row).to_contain_text("memory limit per run")
    memory.fill("8")  # below the model's minimum: the API's error appears under the field
    page.get_by_role("button", name="Save settings").click()
    expect(memory_row.locator(".field-error")).not_to_be_empty()
    memory.fill("1024")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator(".toast")).to_contain_text("Settings saved")
    current = ui.api.get("/api/settings").json()
    assert (current["execution_mode"], current["stall_timeout_s"], current["sections"]["daytona"]["api_key"],
            current["sections"]["sandbox"]["memory_mb"]) == ("local", 30, "********", 1024)
    page.reload()
    expect(page.get_by_label("Execution mode")).to_have_value("local")
    expect(daytona.get_by_label("API key")).to_have_value("")
    expect(daytona.get_by_label("API key")).to_have_attribute("placeholder", re.compile(r"\*{8}"))
    expect(memory).to_have_value("1024")


def test_an_unavailable_backend_says_why_where_it_is_chosen(ui: UI) -> None:
    """The reason comes from GET /api/backends and is shown under the field, not only as an
    option's tooltip (which phones never show); found by a newcomer picking Daytona unset."""
    daytona = next(b for b in ui.api.get("/api/backends").json() if b["name"] == "daytona")
    assert not daytona["available"] and "not configured" in daytona["reason"]
    page = ui.page
    ui.agent("echo", kind="generic", command="echo")
    for route in ("/run", "/chat", "/terminal", "/agents/new"):
        ui.go(route)
        backend = page.get_by_label("Backend")
        reason = page.locator(".field", has=backend).get_by_test_id("backend-reason")
        expect(backend.locator("option[value=daytona]")).to_contain_text("unavailable")
        expect(reason).to_be_hidden()
        backend.select_option("daytona")
        expect(reason).to_have_text(f"daytona is unavailable: {daytona['reason']}")
        backend.select_option("local")
        expect(reason).to_be_hidden()
    ui.go("/settings")
    mode = page.get_by_label("Execution mode")
    expect(mode.locator("option[value=daytona]")).to_have_text("daytona — unavailable")
    mode.select_option("daytona")
    expect(page.locator(".field", has=mode).get_by_test_id("backend-reason")).to_contain_text("not configured")
    ui.expected_statuses.add(422)
    page.get_by_role("button", name="Save settings").click()  # refused: the API's words, not "Invalid"
    expect(page.locator(".field", has=mode).locator(".field-error")).to_contain_text(
        "Daytona needs setting up first: Daytona is not configured")
    mode.select_option("auto")
    # A section's description is a phrase: it ends with a full stop before "Default: ...".
    uid = page.locator("fieldset[data-section=sandbox] .field", has=page.get_by_label("UID", exact=True))
    expect(uid.locator(".hint")).to_have_text("uid and gid inside the sandbox. Default: 65534.")
    memory = page.locator("fieldset[data-section=sandbox] .field", has=page.get_by_label("Memory (MB)", exact=True))
    expect(memory.locator(".hint code")).to_have_text("resources.memory_mb")  # markdown's `code`, not backticks
    key = page.locator("fieldset[data-section=daytona] .field", has=page.get_by_label("API key", exact=True))
    expect(key.locator(".hint")).to_contain_text("not configured. Write-only")


def test_an_agent_whose_backend_plugin_was_removed_keeps_it_when_edited(ui: UI) -> None:
    """Uninstalling a plugin leaves agents naming its backend and kind. Their edit form shows
    them as not installed (never silently "auto"/the first kind) and saving another field keeps
    them: the form does not resend unchanged choices (a removed one would be refused)."""
    agent = ui.agent("orphan", kind="generic", command="echo")
    with sqlite3.connect(ui.server.home / "agent-manager.db") as db:  # as a removed plugin leaves it
        db.execute("UPDATE agents SET backend = 'gone', kind = 'gonekind' WHERE id = ?", (agent["id"],))
    page = ui.page
    ui.go(f"/agents/{agent['id']}")
    backend = page.get_by_label("Backend")
    expect(backend).to_have_value("gone")
    expect(backend.locator("option:checked")).to_have_text("gone (not installed)")
    expect(page.get_by_label("Kind")).to_have_value("gonekind")
    expect(page.locator(".field", has=backend).get_by_test_id("backend-reason")).to_contain_text(
        "gone is not installed")
    page.get_by_label("Timeout (seconds)").fill("42")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator(".toast")).to_contain_text("Saved orphan")
    saved = ui.api.get(f"/api/agents/{agent['id']}").json()
    assert (saved["backend"], saved["kind"], saved["timeout_s"]) == ("gone", "gonekind", 42)


def test_mistyped_route_says_not_found_and_menu_pages_open(ui: UI) -> None:
    page = ui.page
    ui.go("/no-such-page")
    expect(page.locator("main h1")).to_have_text("Not found")
    expect(page.locator("main")).not_to_contain_text("not available")
    pages = set(ui.api.get("/ui/pages.json").json()["pages"])
    for name in ("plans", "files", "users"):
        link = page.get_by_role("navigation", name="Main").get_by_role("link", name=name.capitalize())
        link.click()
        if name not in pages:
            expect(page.locator("main")).to_contain_text("not available")
        else:
            expect(page.locator("main h1")).to_be_visible()


def test_dashboard_shows_agents_and_recent_runs(ui: UI) -> None:
    page = ui.page
    ui.agent("claude", kind="claude")
    ui.agent("ghost", kind="aider", command="aider-not-installed-here")
    ui.wait_run(ui.run("claude", "hello")["id"])
    ui.go("/")
    ghost = page.locator("[data-agent=ghost]")
    expect(ghost).to_contain_text("not installed")
    expect(ghost.locator(".install-hint")).to_contain_text("aider")
    expect(page.locator("[data-agent=claude]")).to_contain_text("available")
    row = page.locator("table.runs tbody tr").first
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text("local")
    expect(row).to_contain_text("auto:")


# ---- phone ----------------------------------------------------------------------------------


def test_every_page_fits_a_phone(phone: UI) -> None:
    page = phone.page
    agent = phone.agent("wide", kind="generic", command="python3",
                        args=["-u", "-c", "print('x' * 3000)\nprint('word ' * 400)"])
    phone.agent("claude", kind="claude")
    run = phone.run("wide", "go")
    phone.wait_run(run["id"])
    conv = phone.api.post("/api/conversations", json={"title": "t" * 190, "agent": "claude"}).json()
    phone.api.post(f"/api/conversations/{conv['id']}/messages", json={"content": "y" * 2000})
    routes = ["/", "/agents", "/agents/new", f"/agents/{agent['id']}", "/run", f"/runs/{run['id']}", "/chat",
              f"/chat/{conv['id']}", "/history", "/history?tab=chats", "/settings", "/plans", "/files", "/users"]
    for route in routes:
        phone.go(route)
        expect(page.locator("main h1, main h2").first).to_be_attached()
        page.wait_for_load_state("networkidle")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{route} is {width}px wide"
    # Navigation stays reachable: the last nav entry can be used on a phone.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Settings").click()
    expect(page.locator("main h1")).to_have_text("Settings")


def test_stalled_run_shows_a_badge_until_output_resumes(ui: UI) -> None:
    page = ui.page
    assert ui.api.patch("/api/settings", json={"stall_timeout_s": 1}).status_code == 200
    ui.agent("napper", kind="generic", command="python3",
             args=["-u", "-c", "import time\nprint('before', flush=True)\ntime.sleep(3)\nprint('after', flush=True)"])
    run = ui.run("napper", "nap")
    ui.go(f"/runs/{run['id']}")
    expect(page.locator("[data-testid=stalled]")).to_be_visible()
    expect(page.locator("[data-testid=stalled]")).to_contain_text("stalled")
    expect(page.locator("[data-testid=output]")).to_contain_text("after")
    expect(page.locator("[data-testid=stalled]")).to_be_hidden()
    expect(page.locator("[data-testid=run-status]")).to_contain_text("succeeded")


def test_a_session_ended_elsewhere_leads_to_the_login_page(ui: UI) -> None:
    """Logged out in another tab (or the token rotated): opening a page whose code was not loaded
    yet shows the login page, not "Failed to fetch dynamically imported module"."""
    page = ui.page
    ui.expected_statuses.add(401)
    ui.go("/agents")
    expect(page.locator("main h1")).to_have_text("Agents")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    ended = httpx.post(ui.server.url + "/logout", cookies=cookies, headers={"Origin": ui.server.url})
    assert ended.status_code == 303
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Plans").click()
    expect(page.get_by_label("Token")).to_be_visible()
    assert "dynamically imported" not in page.content()


def test_log_out(ui: UI) -> None:
    page = ui.page
    ui.expected_statuses.add(401)
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("Token")).to_be_visible()
    response = page.goto(ui.server.url + "/")
    assert response is not None and response.status == 401
