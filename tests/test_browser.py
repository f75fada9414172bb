"""The demo and suite reports in a real browser (Debian's chromium, headless, driven by
Playwright): every image loads and the page raises no script errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tdakit import bench
from tdakit.demo import run_demo
from tdakit.suites import parse

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
if CHROMIUM is None:
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium); the browser "
        "check of the reports is skipped",
        allow_module_level=True,
    )

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def check_page(path: Path) -> int:
    """Open ``path``; assert every image decoded and no script error; return #images."""
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(path.resolve().as_uri())
            page.wait_for_load_state("load")
            n, broken = page.evaluate(
                "() => { const imgs = [...document.images]; return [imgs.length, "
                "imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length]; }"
            )
        finally:
            browser.close()
    assert broken == 0 and not errors, (broken, errors)
    return n


def test_demo_report_renders(tmp_path):
    path = run_demo(
        tmp_path / "demo",
        n_queries=2,
        progress=False,
        epochs=2,
        hidden=(8,),
        n_train=120,
        n_checkpoints=2,
        top_k=3,
        reliability_samples=2,
    )
    assert check_page(path) > 20


def test_suite_report_renders(tmp_path):
    from test_suites import MINI, serial

    bench.run(parse(MINI), tmp_path, executor=serial(), progress=False)
    assert check_page(tmp_path / "mini" / "report.html") > 5
