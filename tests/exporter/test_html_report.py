"""report.html, loaded in a real headless Chromium (Debian's, driven by its chromedriver):
no console errors, every chart drawn with a size, and a screenshot that is not blank."""

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeport.cli import cli
from edgeport.html_report import render_html
from tests.conftest import digits_paths

P = digits_paths()
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
DIGITS = ["examples.digits.model:DigitsCNN", "--weights", P["weights"], "--input", "image:batchx1x8x8", "--calib", P["calib"], "--eval", P["test"]]


def _export(out: Path, *extra) -> Path:
    result = CliRunner().invoke(cli, ["export", *map(str, DIGITS), "--profile", "ci-x86-avx2", "--profile", "raspberry-pi-5", "--runs", "30",
                                      "-o", str(out), "--quiet", *map(str, extra)])
    assert result.exit_code in (0, 1), result.output
    return out / "report.html"


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no headless browser here: install Debian's chromium and chromium-driver (make test does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # the flags a closed network needs: no background fetches, no first-run work
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_report_html_renders_in_a_real_browser(browser, tmp_path):
    pytest.importorskip("matplotlib", reason="the charts need matplotlib (pip install -e '.[report]')")
    Image = pytest.importorskip("PIL.Image", reason="the screenshot check needs Pillow (matplotlib brings it)")
    from selenium.webdriver.common.by import By

    _export(tmp_path / "release-1")
    page = _export(tmp_path / "release-2", "--baseline", tmp_path / "release-1")
    text = page.read_text()
    # self-contained: nothing to fetch (namespace names are identifiers, never fetched)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|url\(\s*["']?(https?:|//)|@import|<script""", text)
    browser.get(page.as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    charts = {c.get_attribute("data-chart"): c for c in browser.find_elements(By.CSS_SELECTOR, "figure.chart")}
    assert {"steps", "budgets-ci-x86-avx2", "budgets-raspberry-pi-5", "latency", "sizes", "baseline"} <= set(charts), set(charts)
    for name, chart in charts.items():
        svg = chart.find_element(By.TAG_NAME, "svg")
        assert svg.size["width"] > 200 and svg.size["height"] > 100, (name, svg.size)
    # not blank where it matters: a chart's own pixels hold its bars' colours, not just white and text grey
    browser.execute_script("arguments[0].scrollIntoView()", charts["budgets-ci-x86-avx2"])
    picture = Image.open(io.BytesIO(charts["budgets-ci-x86-avx2"].screenshot_as_png)).convert("RGB")
    pass_green = (0x2E, 0x7D, 0x32)
    assert picture.getcolors(maxcolors=1 << 20) and any(colour == pass_green for _, colour in picture.getcolors(maxcolors=1 << 20))
    page_pixels = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB").getcolors(maxcolors=1 << 20)
    assert page_pixels is not None and len(page_pixels) > 50
    assert browser.find_element(By.CSS_SELECTOR, "h1 .badge").text in ("PASS", "FAIL")


def test_every_figure_is_in_a_table_when_matplotlib_is_missing(tmp_path, monkeypatch):
    import edgeport.html_report as html_report

    pytest.importorskip("matplotlib", reason="the charts need matplotlib (pip install -e '.[report]')")
    page = _export(tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    monkeypatch.setattr(html_report, "_charts_available", lambda: False)
    text = render_html(report, model_path=tmp_path / "out" / "model.onnx")
    assert "<svg" not in text and "pip install 'edgeport[report]'" in text
    assert text.count("<table>") >= 5  # steps, two profiles' budgets, latency, sizes
    assert "<svg" in page.read_text()


def test_a_chart_that_fails_leaves_the_tables_and_says_why(tmp_path, monkeypatch):
    import edgeport.html_report as html_report

    pytest.importorskip("matplotlib", reason="the charts need matplotlib (pip install -e '.[report]')")
    _export(tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())

    def broken(*args, **kwargs):
        raise RuntimeError("no font here")

    monkeypatch.setattr(html_report, "_figure", broken)
    text = render_html(report, model_path=tmp_path / "out" / "model.onnx")
    assert "The charts could not be drawn (no font here)" in text and "<svg" not in text and text.count("<table>") >= 5
