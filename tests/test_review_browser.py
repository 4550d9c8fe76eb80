"""The review page in a real Chromium: a live `hydra review` over a demo night the real pipeline
made (reference job, LoRA job, overnight job with the embedded backends), and a live Dagster
webserver that the reject button launches the re-materialization on."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import requests
from dagster_graphql import DagsterGraphQLClient

from hydra_assets.domain import overrides
from hydra_assets.domain.demo_data import write_demo_data
from hydra_assets.domain.storage import StorageLayout
from hydra_assets.partitions import QUEENS, queen_night_key
from hydra_assets.review.launcher import REVIEW_TAG
from tests.helpers import hydra_definitions
from tests.test_webserver_graphql import wait_for_webserver

REPO = Path(__file__).resolve().parents[1]
PORTS = range(8300, 8320)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = Path(os.environ.get("HYDRA_REVIEW_SCREENSHOTS", "/work/helpers"))
RUN_TIMEOUT = 300
SLUG = "nova-sterling"
NIGHT = "2026-11-20"


def free_ports(count: int) -> list[int]:
    found = []
    for port in PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    pytest.skip(f"no {count} free ports in {PORTS.start}-{PORTS.stop - 1}")


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url}: server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not up after {timeout}s:\n{log.read_text()[-4000:]}")


def browser(user_data_dir: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     f"--user-data-dir={user_data_dir}", "--window-size=1400,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def all_images_loaded(driver) -> list[dict]:
    """Scroll through the page (thumbnails load lazily) and return every <img>'s load state."""
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    return driver.execute_script(
        "return Array.from(document.images).map(i => ({src: i.currentSrc, complete: i.complete, width: i.naturalWidth}))"
    )


def wait_until(predicate, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(message)


@pytest.mark.slow
def test_reject_in_the_browser_launches_approved_images_and_the_image_shows_rejected(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        message = "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; .ci/run installs them")
        pytest.skip(message)
    from selenium.webdriver.common.by import By

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
        "telemetry:\n  enabled: false\n"
    )
    # The demo night as `make demo` makes it: references, LoRA, then the overnight job (demo
    # renderer, scores, publishing), in this process on the instance the webserver will use.
    write_demo_data(tmp_path / "roster", tmp_path / "storage" / "reference_images")
    layout = StorageLayout(tmp_path / "storage")
    key = queen_night_key(SLUG, NIGHT)
    defs = hydra_definitions(tmp_path)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        for job_name, partition in (("queen_reference_job", SLUG), ("queen_lora_job", SLUG), ("overnight_job", key)):
            assert defs.resolve_job_def(job_name).execute_in_process(partition_key=partition, instance=instance).success
    scores = pd.read_parquet(layout.scores_path(NIGHT, SLUG)).set_index("image_id")
    target = scores.index[scores["approved"]][0]

    dagster_port, review_port = free_ports(2)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "HYDRA_ROSTER_DIR": str(tmp_path / "roster"),
        "HYDRA_STORAGE_ROOT": str(tmp_path / "storage"),
        "HYDRA_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
        "HYDRA_DAGSTER_URL": f"http://127.0.0.1:{dagster_port}",
        "HYDRA_REVIEW_URL": f"http://127.0.0.1:{review_port}",
        "HYDRA_REVIEW_CACHE_DIR": str(tmp_path / "review_cache"),
    }
    webserver_log, review_log = tmp_path / "webserver.log", tmp_path / "review.log"
    with open(webserver_log, "w") as w_log, open(review_log, "w") as r_log:
        webserver = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-webserver")), "-w", "workspace.yaml", "-h", "127.0.0.1",
             "-p", str(dagster_port)], cwd=REPO, env=env, stdout=w_log, stderr=subprocess.STDOUT)
        review = subprocess.Popen(
            [sys.executable, "-m", "hydra_assets.cli", "review", "--port", str(review_port)],
            cwd=REPO, env=env, stdout=r_log, stderr=subprocess.STDOUT)
    driver = None
    base = f"http://127.0.0.1:{review_port}"
    try:
        wait_for(f"{base}/healthz", review, review_log)
        wait_for_webserver(dagster_port, webserver, webserver_log)
        driver = browser(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
        driver.get(f"{base}/nights/{NIGHT}/{SLUG}")
        tiles = driver.find_elements(By.CSS_SELECTOR, "li.tile")
        assert sorted(t.get_attribute("data-image-id") for t in tiles) == sorted(scores.index)
        states = wait_until(lambda: (s := all_images_loaded(driver)) and all(i["complete"] for i in s) and s, 60,
                            "thumbnails did not finish loading")
        assert len(states) == len(scores) and all(i["width"] > 0 for i in states), states
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(SCREENSHOTS / "review-grid.png"))

        tile = driver.find_element(By.CSS_SELECTOR, f'li.tile[data-image-id="{target}"]')
        assert tile.get_attribute("data-status") == "approved"
        tile.find_element(By.NAME, "reason").send_keys("wrong outfit")
        tile.find_element(By.CSS_SELECTOR, "button.reject").click()
        banner = wait_until(lambda: driver.find_elements(By.ID, "outcome"), 30, "no outcome banner after the click")[0]
        assert "Re-materialization started" in banner.text, banner.text
        run_id = banner.find_element(By.TAG_NAME, "a").get_attribute("href").rsplit("/", 1)[1]

        override = overrides.load_overrides(layout.overrides_path(NIGHT, SLUG))[target]
        assert (override.decision, override.by, override.reason) == ("reject", getpass.getuser(), "wrong outfit")

        client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_port)
        status = wait_until(
            lambda: (s := client.get_run_status(run_id)) in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
                                                            dg.DagsterRunStatus.CANCELED) and s,
            RUN_TIMEOUT, f"run {run_id} did not finish")
        assert status == dg.DagsterRunStatus.SUCCESS, webserver_log.read_text()[-4000:]
        with dg.DagsterInstance.from_config(str(home)) as instance:
            run = instance.get_run_by_id(run_id)
            assert run.tags[REVIEW_TAG] == f"{getpass.getuser()}@{target}"
            assert run.tags["dagster/partition"] == str(key)
            assert {k.to_user_string() for k in run.asset_selection} == {"image_scores", "approved_images"}

        driver.get(f"{base}/nights/{NIGHT}/{SLUG}")
        tile = driver.find_element(By.CSS_SELECTOR, f'li.tile[data-image-id="{target}"]')
        assert (tile.get_attribute("data-status"), tile.get_attribute("data-method")) == ("rejected", "manual")
        assert "manual: wrong outfit" in tile.text

        driver.get(f"{base}/nights/{NIGHT}/{SLUG}/images/{target}")
        wait_until(lambda: driver.execute_script("const i = document.querySelector('.frame img'); return i.complete && i.naturalWidth"),
                   30, "full-size image did not load")
        # the face box is drawn where the chosen face is, in the image's own pixels
        drawn = driver.execute_script(
            "const img = document.querySelector('.frame img'), r = img.getBoundingClientRect();"
            "const b = document.querySelector('.frame .facebox').getBoundingClientRect(), k = img.naturalWidth / r.width;"
            "return [(b.left - r.left) * k, (b.top - r.top) * k, (b.right - r.left) * k, (b.bottom - r.top) * k];")
        expected = [float(v) for v in scores.loc[target, "face_bbox"]]
        assert all(abs(d - e) <= 3 for d, e in zip(drawn, expected)), (drawn, expected)
        driver.save_screenshot(str(SCREENSHOTS / "review-image.png"))
    finally:
        if driver is not None:
            driver.quit()
        for process in (review, webserver):
            process.terminate()
            process.wait(timeout=30)
