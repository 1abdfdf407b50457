"""The live dashboard in headless Chromium during a short real run.

Real redis-server + Tansu (the session stack), ``python -m recall_api``, ``python -m learner`` and
``producer/replay.py`` as a user starts them; Debian's ``chromium`` + ``chromium-driver`` driven by selenium open
``/dashboard`` and the test reads each chart's ``data-points`` while the replay is still sending: the AUC and
HR curves gain points as the stream runs, and throughput, lag, freshness and PS-rows charts are drawn.

``LFM_DASHBOARD_SCREENSHOT=docs/dashboard.png`` also saves a screenshot once the stream is trained (README).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from _learner_util import FAST, ROOT, child_env, learner_cmd, prepare
from lfm_local.stack import free_port
from tests._recall_util import wait_for

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1250"]
EVENTS, RATE = 40_000, 2_000  # a 20 s stream


def chromium_paths() -> tuple[str, str]:
    """(chromium binary, chromedriver) from Debian's packages (``.ci/run`` installs them when missing)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert browser and driver, "chromium / chromium-driver not found: apt-get install -y chromium chromium-driver"
    return browser, driver


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    service = Service(executable_path=driver, log_output=str(tmp_path / "chromedriver.log"))
    b = webdriver.Chrome(options=options, service=service)
    yield b
    b.quit()


def points(browser, chart: str) -> int:
    return int(browser.find_element("id", chart).get_attribute("data-points") or 0)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_dashboard_curves_gain_points_while_the_stream_runs(redis_url, bootstrap, ml_small_ratings, tmp_path,
                                                          browser):
    data = prepare(tmp_path / "data", ratings=ml_small_ratings)
    ns, topic = f"dash{uuid.uuid4().hex[:8]}", f"ratings-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = child_env()
    procs: list[subprocess.Popen] = []
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("recall", "learner", "replay")}

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[name], stderr=subprocess.STDOUT))
        return procs[-1]

    try:
        recall = start("recall", [sys.executable, "-m", "recall_api", "--port", str(port), "--redis-url", redis_url,
                                  "--namespace", ns, "--dim", "8", "--data-dir", str(data)])
        learner = start("learner", learner_cmd(redis_url, bootstrap, topic, ns, *FAST, "--data-dir", str(data),
                                               "--train-log-steps", "10", "--test-log-steps", "150",
                                               "--progress-interval", "2"))
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: recall.poll() is None and _ok(f"{url}/dashboard/data"), timeout=120, interval=0.2)
        browser.get(f"{url}/dashboard")
        # the learner reports before any record: wait until it is in the group, then start the stream
        wait_for(lambda: _states(url) & {"starting", "caught up"}, timeout=180, interval=0.5)
        replay = start("replay", [sys.executable, str(ROOT / "producer" / "replay.py"), "--data-dir", str(data),
                                  "--bootstrap", bootstrap, "--topic", topic, "--rate", str(RATE),
                                  "--max-events", str(EVENTS), "--state-file", str(tmp_path / "replay.json")])
        first = wait_for(lambda: points(browser, "chart-auc"), timeout=120, interval=0.2)
        second = wait_for(lambda: (n if (n := points(browser, "chart-auc")) > first else 0), timeout=60, interval=0.2)
        assert replay.poll() is None, "the replay ended before a second reading of the curves"
        assert second > first > 0
        hr = points(browser, "chart-hr")
        wait_for(lambda: points(browser, "chart-hr") > hr, timeout=60, interval=0.2)
        assert replay.poll() is None, "the HR curve gained its points after the stream ended"
        for chart in ("chart-rate", "chart-lag", "chart-fresh", "chart-rows", "chart-mem"):
            assert points(browser, chart) > 0, chart
        assert "caught up" in _states(url) or replay.poll() is None
        status = browser.find_element("id", "status").text
        assert ns in status and "events" in status, status
        shot = os.environ.get("LFM_DASHBOARD_SCREENSHOT")
        if shot:  # once the stream is trained, with its last test evaluation
            assert replay.wait(timeout=120) == 0
            wait_for(lambda: "caught up" in _states(url), timeout=120, interval=0.5)
            stop(learner)  # its final test evaluation is the last point
            wait_for(lambda: points(browser, "chart-auc") and _has_end(url), timeout=60, interval=0.5)
            browser.execute_script("window.scrollTo(0, 0)")
            wait_for(lambda: browser.save_screenshot(str(Path(shot).resolve())), timeout=10)
    finally:
        for p in reversed(procs):
            stop(p)
        for f in logs.values():
            f.close()
    assert learner.returncode == 0, (tmp_path / "learner.log").read_text()[-3000:]


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _records(url: str) -> list[dict]:
    try:
        return httpx.get(f"{url}/dashboard/data", timeout=5).json()["records"]
    except (httpx.HTTPError, KeyError, ValueError):
        return []


def _states(url: str) -> set[str]:
    """The states of the last few progress records the dashboard serves."""
    return {r["state"] for r in _records(url)[-3:] if r.get("event") == "progress"}


def _has_end(url: str) -> bool:
    return any(r.get("event") == "end" for r in _records(url))


def test_a_token_protected_service_serves_the_dashboard_to_a_browser_given_the_token(redis_url, tmp_path, browser):
    """RECALL_API_TOKEN set: the page loads without the token, says which address to open, and given the token in
    its fragment polls /dashboard/data (whose answers reach the status line); the token leaves the address bar."""
    token = "dash-" + uuid.uuid4().hex
    port = free_port()
    log = open(tmp_path / "recall.log", "w")
    recall = subprocess.Popen([sys.executable, "-m", "recall_api", "--port", str(port), "--redis-url", redis_url,
                               "--namespace", f"dash{uuid.uuid4().hex[:8]}", "--dim", "8"],
                              cwd=ROOT, env=child_env(RECALL_API_TOKEN=token), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: recall.poll() is None and _ok(f"{url}/healthz"), timeout=120, interval=0.2)
        status = lambda: browser.find_element("id", "status").text  # noqa: E731
        browser.get(f"{url}/dashboard")
        wait_for(lambda: "this service needs its token" in status(), timeout=30, interval=0.2)
        assert "/dashboard#token=" in status()
        browser.get(f"{url}/dashboard#token={token}")
        wait_for(lambda: "served:" in status(), timeout=30, interval=0.2)  # /dashboard/data answered
        assert "token" not in status() and token not in browser.current_url
        browser.refresh()  # the tab keeps the token
        wait_for(lambda: "served:" in status(), timeout=30, interval=0.2)
    finally:
        stop(recall)
        log.close()
