"""The playground page in headless Chromium (Debian's chromium + chromedriver, driven by Selenium).

The page is served by a real uvicorn server with the tiny scorer and an API key; the test types an instruction
and responses, ranks them, and reads the ranking back from the page.
"""

from __future__ import annotations

import os
import shutil

import pytest

from cappy.serve import ServeConfig, create_app
from test_serve import running
from tolerances import assert_scores_close

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

# CI installs the browser and sets CAPPY_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping.
REQUIRED = os.environ.get("CAPPY_REQUIRE_BROWSER") == "1"
MISSING = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not REQUIRED and (CHROMIUM is None or CHROMEDRIVER is None), reason=MISSING),
]


@pytest.fixture
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail(f"CAPPY_REQUIRE_BROWSER=1 but the browser is missing: {MISSING}")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs the selenium package")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_playground_ranks_responses_in_chromium(browser, tiny_scorer, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.delenv("CAPPY_API_KEY", raising=False)
    instruction = "Is the sky blue on a clear day? Answer yes or no."
    responses = ["yes", "no", "The sky is green.", "<b>not bold</b>"]
    app = create_app(tiny_scorer, ServeConfig(api_key="pw", model_name="tiny-bert"))
    with running(app) as (base, _):
        browser.get(base + "/")
        wait = WebDriverWait(browser, 30)
        # Without the key the page says so and opens the key box.
        wait.until(lambda d: "API key" in d.find_element(By.ID, "model").text)
        assert browser.find_element(By.ID, "key-box").get_attribute("open") is not None

        browser.find_element(By.ID, "instruction").send_keys(instruction)
        browser.find_element(By.ID, "add-response").click()
        boxes = browser.find_elements(By.CSS_SELECTOR, "textarea.response")
        assert len(boxes) == 4
        for box, text in zip(boxes, responses):
            box.send_keys(text)

        browser.find_element(By.ID, "rank").click()
        wait.until(lambda d: "401" in d.find_element(By.ID, "status").text)
        assert browser.find_elements(By.CSS_SELECTOR, "li.result") == []

        browser.find_element(By.ID, "api-key").send_keys("pw")
        browser.find_element(By.ID, "rank").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.result")) == 4)
        rows = browser.find_elements(By.CSS_SELECTOR, "li.result")
        shown = [
            {
                "index": int(r.get_attribute("data-index")),
                "score": float(r.get_attribute("data-score")),
                "text": r.find_element(By.CSS_SELECTOR, ".text").text,
                "label": r.find_element(By.CSS_SELECTOR, ".score").text,
                "width": r.find_element(By.CSS_SELECTOR, ".fill").get_attribute("style"),
            }
            for r in rows
        ]
        assert "tiny-bert" in browser.find_element(By.ID, "model").text
        assert "Ranked 4 responses" in browser.find_element(By.ID, "status").text

    expected = tiny_scorer.rank(instruction, responses)
    assert [s["index"] for s in shown] == [e["index"] for e in expected]
    assert [s["text"] for s in shown] == [e["text"] for e in expected]  # markup is shown as text, not rendered
    assert_scores_close([s["score"] for s in shown], [e["score"] for e in expected])  # micro-batched: float32 rounding
    assert [s["label"] for s in shown] == [f"{e['score']:.4f}" for e in expected]
    assert "width: 100%" in shown[0]["width"] and "width: 6%" in shown[-1]["width"]
