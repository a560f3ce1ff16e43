"""Plans and orchestrations in a real headless Chromium against a real server (fake agents)."""

from __future__ import annotations

import re

from playwright.sync_api import expect
from ui_harness import UI

WORKER = ("import sys, time, re; p = sys.argv[1]; m = re.search(r'SLEEP=([0-9.]+)', p); "
          "time.sleep(float(m.group(1))) if m else None; sys.exit('asked to fail') if 'FAIL' in p else "
          "print('done: ' + p.splitlines()[0])")




def test_goal_to_plan_to_edit_to_run_all_green(ui: UI) -> None:
    page = ui.page
    ui.agent("worker", kind="generic", command="python3", args=["-c", WORKER, "{prompt}"])
    ui.agent("planner", kind="generic", command="fake-planner")
    ui.go("/plans")
    expect(page.locator("main h1")).to_have_text("Plans")
    page.get_by_label("Goal").fill("write a guide AGENT=worker")
    page.get_by_label("Planner agent").select_option("planner")
    page.get_by_role("button", name="Draft plan").click()
    editor = page.locator("#plan-yaml")
    expect(editor).to_have_value(re.compile(r"id: research"))
    preview = page.locator("[data-testid=plan-preview]")
    expect(preview.locator(".dag-node")).to_have_count(4)
    expect(page.locator("[data-testid=plan-errors] [data-valid=true]")).to_be_visible()
    expect(page.get_by_role("button", name="Run", exact=True)).to_be_enabled()

    # an edit that breaks the plan: the server's message names the step; Run is disabled
    yaml_text = editor.input_value()
    editor.fill(yaml_text + "- id: extra\n  action: write_file\n  path: extra.txt\n"
                "  content: \"{{ steps.nope.output }}\"\n  depends_on: [save]\n")
    expect(page.locator("[data-testid=plan-errors]")).to_contain_text("step 'extra'")
    expect(page.locator("[data-testid=plan-errors]")).to_contain_text("no step 'nope'")
    expect(page.get_by_role("button", name="Run", exact=True)).to_be_disabled()
    # fix it: a fifth step that uses the saved file
    editor.fill(yaml_text + "- id: extra\n  action: shell\n  argv: [cat, result.md]\n  depends_on: [save]\n")
    expect(page.locator("[data-testid=plan-errors] [data-valid=true]")).to_contain_text("5 steps")
    expect(preview.locator(".dag-node")).to_have_count(5)

    page.get_by_role("button", name="Run", exact=True).click()
    expect(page).to_have_url(re.compile(r"#/orchestrations/orch_"))
    dag = page.locator("main [data-testid=dag]")
    expect(dag.locator(".dag-node")).to_have_count(5)
    for step in ("research", "outline", "examples", "save", "extra"):
        expect(dag.locator(f".dag-node[data-step={step}]")).to_have_attribute("data-status", "succeeded",
                                                                              timeout=30_000)
    expect(page.locator("[data-testid=orch-status]")).to_contain_text("succeeded")
    expect(dag.locator(".dag-node[data-step=research]")).to_have_attribute("data-backend", "local")
    expect(dag.locator(".dag-node[data-step=research]")).to_contain_text("local")
    colour = dag.locator(".dag-node[data-step=extra] rect").evaluate("r => getComputedStyle(r).stroke")
    pending = page.evaluate("getComputedStyle(document.body).getPropertyValue('--ok')")
    assert colour and pending  # the succeeded colour comes from the theme's --ok

    dag.locator(".dag-node[data-step=outline]").click()  # a node opens its side panel, live log included
    panel = page.locator("[data-testid=step-panel]")
    expect(panel).to_be_visible()
    expect(panel.locator("[data-testid=step-output]")).to_contain_text("done: Outline using:")
    expect(panel.locator("[data-testid=output]")).to_contain_text("done: Outline using:")
    expect(page).to_have_url(re.compile(r"\?step=outline"))
    panel.get_by_role("link", name="open the run page").click()
    expect(page).to_have_url(re.compile(r"#/runs/run_"))
    expect(page.locator("[data-testid=output]")).to_contain_text("done: Outline using:")


def test_failing_node_skips_its_descendants_while_a_sibling_branch_finishes(ui: UI) -> None:
    page = ui.page
    ui.agent("worker", kind="generic", command="python3", args=["-c", WORKER, "{prompt}"])
    plan = {"name": "branches", "steps": [
        {"id": "root", "agent": "worker", "prompt": "root"},
        {"id": "bad", "agent": "worker", "prompt": "SLEEP=0.5 FAIL", "depends_on": ["root"]},
        {"id": "after-bad", "agent": "worker", "prompt": "x", "depends_on": ["bad"]},
        {"id": "last-bad", "action": "write_file", "path": "x", "content": "", "depends_on": ["after-bad"]},
        {"id": "slow", "agent": "worker", "prompt": "SLEEP=2", "depends_on": ["root"]},
        {"id": "after-slow", "agent": "worker", "prompt": "{{ steps.slow.output }}", "depends_on": ["slow"]}]}
    orch = ui.api.post("/api/orchestrations", json={"plan": plan}).json()
    ui.go(f"/orchestrations/{orch['id']}")
    dag = page.locator("main [data-testid=dag]")
    expect(dag.locator(".dag-node")).to_have_count(6)
    expect(dag.locator(".dag-node[data-step=bad]")).to_have_attribute("data-status", "failed", timeout=20_000)
    expect(dag.locator(".dag-node[data-step=after-bad]")).to_have_attribute("data-status", "skipped")
    expect(dag.locator(".dag-node[data-step=last-bad]")).to_have_attribute("data-status", "skipped")
    expect(dag.locator(".dag-node[data-step=after-slow]")).to_have_attribute("data-status", "succeeded",
                                                                             timeout=20_000)
    expect(dag.locator(".dag-node[data-step=slow]")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("[data-testid=orch-status]")).to_contain_text("failed")
    expect(page.locator("[data-testid=counts]")).to_contain_text("3 succeeded")
    expect(page.locator("[data-step-row=bad]")).to_contain_text("asked to fail")
    failed_stroke = dag.locator(".dag-node[data-step=bad] rect").evaluate("r => getComputedStyle(r).stroke")
    ok_stroke = dag.locator(".dag-node[data-step=slow] rect").evaluate("r => getComputedStyle(r).stroke")
    assert failed_stroke != ok_stroke
    expect(page.get_by_role("button", name="Resume")).to_be_visible()

    ui.go("/orchestrations")
    expect(page.locator(f"[data-orchestration={orch['id']}]")).to_contain_text("failed")
