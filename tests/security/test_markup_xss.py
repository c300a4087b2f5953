"""File names are data, never markup: a projector file named to smuggle a NiceGUI ``:``-prop (which
the browser evaluates as JavaScript) beside a model must show up as text on the launch page and run
nothing in the admin's browser. Drives the real app (``python main.py``) with headless Chromium."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llamaman.testing.binaries import llama_server_executable
from llamaman.testing.netports import free_block, free_port
from llamaman.testing.tiny_gguf import write_tiny_model

ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ADMIN, PASSWORD = "admin", "correct horse battery staple"
# Each payload sets a flag in the page if any of it is ever evaluated.
PAYLOADS = [
    'mmproj" :title="window.__pwned=1" x=".gguf',
    "mmproj' :title='window.__pwned=2' x='.gguf",
    'mmproj" :placeholder="(window.__pwned=3)" :x="1.gguf',
]

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()) and not os.environ.get("CI"),
    reason="chromium / chromedriver not installed",
)


@contextlib.contextmanager
def running_app(tmp: Path, mmproj_name: str) -> Iterator[str]:
    models = tmp / "models"
    write_tiny_model(models / "vision" / "tiny-v.gguf", "A")
    write_tiny_model(models / "vision" / mmproj_name, "B")
    port, public, internal = free_port(), free_block(8, 24000), free_block(8, 24100)
    # NiceGUI treats a process that sees PYTEST_* variables as a test run; this one must serve.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "NICEGUI_"))}
    env = {
        **inherited,
        "MODELS_DIR": str(models),
        "DATA_DIR": str(tmp / "data"),
        "LLAMAMAN_HOST": "127.0.0.1",
        "LLAMAMAN_PORT": str(port),
        "LLAMAMAN_PROXY_PORT": "0",
        "PORT_RANGE_START": str(public),
        "PORT_RANGE_END": str(public + 7),
        "INTERNAL_PORT_RANGE_START": str(internal),
        "INTERNAL_PORT_RANGE_END": str(internal + 7),
        "LLAMAMAN_ADMIN_USER": ADMIN,
        "LLAMAMAN_ADMIN_PASSWORD": PASSWORD,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    if binary := llama_server_executable():
        env["LLAMA_SERVER_BIN"] = binary
    log = (tmp / "app.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py")], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"main.py exited:\n{(tmp / 'app.log').read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=1, trust_env=False).status_code == 200:
                    break
            assert time.monotonic() < deadline, "main.py did not answer /health within 60 s"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _browser(profile: Path):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}",
    ):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.mark.parametrize("name", PAYLOADS, ids=["double-quote", "single-quote", "placeholder"])
def test_a_projector_file_name_runs_no_script_on_the_launch_page(tmp_path: Path, name: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with running_app(tmp_path, name) as base:
        driver = _browser(tmp_path / "chromium")
        try:
            driver.get(f"{base}/login")
            WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "input")) >= 2)
            fields = driver.find_elements(By.CSS_SELECTOR, "input")
            fields[0].send_keys(ADMIN)
            fields[1].send_keys(PASSWORD)
            driver.find_element(By.XPATH, "//button[.//span[text()='Sign in']]").click()
            WebDriverWait(driver, 30).until(lambda d: "/login" not in d.current_url)
            driver.get(f"{base}/launch?model=vision/tiny-v.gguf")
            expected = f"auto: vision/{name}"

            def placeholders(d):  # type: ignore[no-untyped-def]
                found = [
                    el.get_attribute("placeholder") or "" for el in d.find_elements(By.CSS_SELECTOR, "input")
                ]
                return [p for p in found if p.startswith("auto: vision/mmproj")]

            WebDriverWait(driver, 30).until(placeholders)
            time.sleep(0.5)
            assert driver.execute_script("return window.__pwned === undefined"), "the file name ran as script"
            # The name arrives as the placeholder's text, quotes and all: proof it was treated as data.
            assert placeholders(driver) == [expected]
            titles = [el.get_attribute("title") for el in driver.find_elements(By.CSS_SELECTOR, "[title]")]
            assert not any("__pwned" in (t or "") for t in titles)
        finally:
            driver.quit()
