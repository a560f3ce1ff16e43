"""The run log like a CI log, in a real browser at both sizes: line numbers, timestamps,
search, groups, copy/download, and 100,000 lines that stay responsive."""

from __future__ import annotations

import re

from playwright.sync_api import expect
from ui_harness import UI, is_phone, output_of


def test_log_like_ci_search_timestamps_groups_copy_download(sized: UI) -> None:
    page = sized.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    script = ("import sys\nprint('::group::setup')\nfor i in range(50): print('install', i)\nprint('::endgroup::')\n"
              "for i in range(300): print('\\x1b[32mline\\x1b[0m', i)\nprint('needle here', file=sys.stderr)\n"
              "print('the end')")
    sized.agent("ci", kind="generic", command="python3", args=["-u", "-c", script])
    run = sized.run("ci", "build")
    sized.wait_run(run["id"])
    sized.go(f"/runs/{run['id']}")
    box = page.get_by_test_id("output")
    expect(page.get_by_test_id("log-lines")).to_have_text("354 lines")
    # the group is collapsed: its 50 lines are hidden behind one header row
    expect(page.get_by_label("Follow")).to_be_checked()
    box.evaluate("b => { b.scrollTop = 0; }")
    expect(page.get_by_label("Follow")).not_to_be_checked()  # scrolling up stops following
    expect(box.locator(".log-group")).to_contain_text("setup")
    expect(box.locator(".log-group")).to_contain_text("51 lines")
    assert "install 3" not in box.inner_text()
    # search finds the line and scrolls to it, next/previous move between matches
    page.get_by_test_id("log-search").fill("install 4")
    expect(page.get_by_test_id("log-count")).to_have_text(re.compile(r"^1/\d+$"))
    expect(box.locator(".log-row.current")).to_contain_text("install 4")  # the group opened for it
    page.get_by_role("button", name="Next match").click()
    expect(page.get_by_test_id("log-count")).to_have_text(re.compile(r"^2/"))
    page.get_by_test_id("log-search").fill("needle")
    expect(box.locator(".log-row.current")).to_contain_text("needle here")
    expect(box.locator(".log-row.current")).to_be_in_viewport()
    assert "err" in (box.locator(".log-row.current").get_attribute("class") or "")
    needle = output_of(page).split("\n").index("needle here") + 1  # stdout and stderr may interleave
    expect(box.locator(".log-row.current .log-num")).to_have_text(str(needle))
    expect(page.get_by_label("Follow")).not_to_be_checked()  # searching stops following
    # timestamps on and off
    expect(box.locator(".log-ts")).to_have_count(0)
    page.get_by_label("Timestamps").check()
    expect(box.locator(".log-ts").first).to_have_text(re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$"))
    # copy and download give the whole log
    page.get_by_role("button", name="Copy", exact=True).click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.count("\n") == 354 and "install 49" in copied
    with page.expect_download() as info:
        page.get_by_role("button", name="Download", exact=True).click()
    path = info.value.path()
    assert path is not None and open(path).read() == copied  # noqa: SIM115


def test_a_100000_line_log_stays_responsive(sized: UI) -> None:
    result = sized.page.evaluate("""async () => {
      const { logView } = await import('/static/lib/logview.js');
      const log = logView({ label: 'bench' });
      document.querySelector('main').append(log.el);
      const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
      const t0 = performance.now();
      let chunk = '';
      for (let i = 0; i < 100000; i++) {
        chunk += `\\x1b[3${i % 8}mline ${i}\\x1b[0m of the build output\\n`;
        if (chunk.length > 8000) { log.write(chunk); chunk = ''; }
      }
      log.write(chunk);
      await frame(); await frame();
      const written = performance.now() - t0;
      const t1 = performance.now();
      const found = log.search('line 99990 ');
      log.next();
      await frame();
      const searched = performance.now() - t1;
      const current = log.box.querySelector('.log-row.current');
      const currentLine = current ? current.dataset.line : null;
      const t2 = performance.now();
      for (let k = 0; k < 20; k++) {
        log.box.scrollTop = k * 97000; log.box.dispatchEvent(new Event('scroll')); await frame();
      }
      const scrolled = (performance.now() - t2) / 20;
      return { lines: log.lineCount(), rows: log.box.querySelectorAll('.log-row').length, written, searched, scrolled,
               found, current: currentLine };
    }""")
    print(f"\n100,000-line log ({'phone' if is_phone(sized) else 'desktop'}): written and painted in "
          f"{result['written']:.0f} ms, search + jump {result['searched']:.0f} ms, "
          f"{result['scrolled']:.1f} ms per scroll frame, {result['rows']} rows in the DOM")
    assert result["lines"] == 100_000
    assert result["rows"] < 300  # windowed: the DOM does not grow with the log
    assert result["found"] == 1 and result["current"] == "99991"


