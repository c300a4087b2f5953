"""Screenshots of every page of a real LlamaMan, for the README.

Runs ``python main.py`` on throwaway folders with tiny models (and a real llama-server when one is
installed), a local stand-in for Hugging Face, and the admin from LLAMAMAN_ADMIN_USER/PASSWORD;
launches two models and sends some traffic over REST; then signs in with headless Chromium and saves
``docs/screenshots/<page>.png``.

    python docs/take_screenshots.py            # all pages into docs/screenshots
    python docs/take_screenshots.py --quick --out /tmp/shots   # sign-in and instances only

Besides the desktop window it captures a 390 px phone (``*-phone.png``) and the dark theme
(``*-dark.png``) of the main pages.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llamaman.testing.binaries import llama_server_executable  # noqa: E402
from llamaman.testing.fake_hub import FakeHub  # noqa: E402
from llamaman.testing.netports import free_block, free_port  # noqa: E402
from llamaman.testing.tiny_gguf import write_tiny_model  # noqa: E402

ADMIN, PASSWORD = "admin", "screenshots-only"
# --fake-gpus: main.py with the GPU sampler reading llamaman.testing.fake_nvml (two stand-in NVIDIA
# GPUs), so the header's gauges show on machines without a GPU.
FAKE_GPU_BOOT = """
import runpy, sys
from pathlib import Path
from llamaman.telemetry import monitor as telemetry
from llamaman.telemetry.gpu import GpuSampler
from llamaman.testing.fake_nvml import FakeNvml
real_init = telemetry.Telemetry.__init__
def with_fake_gpus(self, *args, gpu=None, **kwargs):
    fake = GpuSampler(nvml=FakeNvml(), drm_root=Path("/nonexistent"), cli=False)
    real_init(self, *args, gpu=fake, **kwargs)
telemetry.Telemetry.__init__ = with_fake_gpus
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PHONE = (390, 844)


@contextlib.contextmanager
def running_app(tmp: Path, hub_url: str | None, fake_gpus: bool = False) -> Iterator[str]:
    """``python main.py`` on ``tmp``; yields its base URL and stops it afterwards."""
    models = tmp / "models"
    write_tiny_model(models / "tiny-a.gguf", "A", name="tiny-llama-a")
    write_tiny_model(models / "tiny-b.gguf", "B", name="tiny-llama-b")
    write_tiny_model(models / "team" / "tiny-a-32k.gguf", "A", context_length=32768)
    write_tiny_model(models / "embed" / "tiny-embed.gguf", "A", embedding=True)
    port, public, internal = free_port(), free_block(8, 23000), free_block(8, 23100)
    # NiceGUI treats a process that sees PYTEST_* variables as a test run; when this script runs
    # under pytest, main.py must still start as a real server.
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
        "MODEL_LOAD_TIMEOUT": "60",
    }
    if binary := llama_server_executable():
        env["LLAMA_SERVER_BIN"] = binary
    if hub_url:
        env["HF_ENDPOINT"] = hub_url
    log = (tmp / "app.log").open("wb")
    main = str(ROOT / "main.py")
    argv = [sys.executable, "-c", FAKE_GPU_BOOT, main] if fake_gpus else [sys.executable, main]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(argv, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                tail = (tmp / "app.log").read_text()[-3000:]
                raise RuntimeError(f"main.py exited ({proc.returncode}):\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=1, trust_env=False).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("main.py did not answer /health within 60 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def seed(base: str, quick: bool, hub: FakeHub | None) -> None:
    """Instances, traffic, a key and a running download, so every page has something to show."""
    # As the UI's own page: changes made with the session cookie must carry LlamaMan's Origin.
    with httpx.Client(base_url=base, timeout=120, trust_env=False, headers={"Origin": base}) as c:
        # /health answers before startup has created the admin from the environment.
        for _ in range(100):
            r = c.post("/api/auth/login", json={"username": ADMIN, "password": PASSWORD})
            if r.status_code == 200:
                break
            time.sleep(0.3)
        r.raise_for_status()
        launched = []
        for body in ({"model_path": "tiny-a.gguf", "ctx_size": 2048}, {"model_path": "tiny-b.gguf"}):
            r = c.post("/api/instances", json=body)
            if r.status_code == 201:
                launched.append(r.json()["id"])
            else:
                print(f"launch of {body['model_path']} refused: {r.text}", file=sys.stderr)
        if quick:
            return
        deadline = time.monotonic() + 60
        while launched and time.monotonic() < deadline:
            states = [c.get(f"/api/instances/{i}").json()["status"] for i in launched]
            if all(s in ("healthy", "failed") for s in states):
                break
            time.sleep(0.3)
        for i, text in enumerate(("hello", "write the alphabet", "again", "one more")):
            model = "tiny-a" if i % 2 == 0 else "tiny-b"
            messages = [{"role": "user", "content": text}]
            c.post(
                "/v1/chat/completions",
                json={"model": model, "messages": messages, "max_tokens": 16 * (i + 1)},
            )
        c.post("/api/api-keys", json={"name": "open-webui"}).raise_for_status()
        c.post("/api/api-keys", json={"name": "ci-bench", "allowed_models": ["tiny-*"], "rpm_limit": 60})
        if hub is not None:
            c.post("/api/downloads", json={"repo_id": "team/small-GGUF", "filename": "small-Q8_0.gguf"})
            c.post("/api/downloads", json={"repo_id": "team/big-GGUF", "filename": "big-Q4_K_M.gguf"})


def browser(profile: Path, window: tuple[int, int]):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
    ):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def wait_for(driver, css: str, timeout: float = 20, text: str | None = None) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    cond = (
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text)
        if text
        else ec.presence_of_element_located((By.CSS_SELECTOR, css))
    )
    WebDriverWait(driver, timeout).until(cond)


def shoot(driver, out: Path, name: str, settle: float = 1.0, full: bool = False) -> Path:  # type: ignore[no-untyped-def]
    width, min_height = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    """Save the window, or with ``full`` the whole page as tall as its content (capped)."""
    import base64

    time.sleep(settle)
    path = out / f"{name}.png"
    if full:
        height = driver.execute_script(
            "const els = [document.documentElement, document.body, ...document.querySelectorAll('.q-page')];"
            "return Math.max(...els.map(e => e.scrollHeight));"
        )
        height = max(min_height, min(int(height) + 16, 2400))
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            },
        )
        path.write_bytes(base64.b64decode(shot["data"]))
    else:
        driver.save_screenshot(str(path))
    print(f"saved {path}")
    return path


def sign_in(driver, base: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    fields = driver.find_elements(By.CSS_SELECTOR, "input")
    fields[0].send_keys(ADMIN)
    fields[1].send_keys(PASSWORD)
    driver.find_element(By.XPATH, "//button[.//span[text()='Sign in']]").click()
    wait_for(driver, ".q-tabs", 30)


def capture(base: str, out: Path, profile: Path, quick: bool, window: tuple[int, int]) -> list[Path]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser(profile, window)
    shots: list[Path] = []
    try:
        driver.get(f"{base}/")
        wait_for(driver, "input", 30)
        shots.append(shoot(driver, out, "login"))
        sign_in(driver, base)
        wait_for(driver, "body", 30, text="healthy" if not quick else "Instances")
        shots.append(shoot(driver, out, "instances", settle=2.5))
        if quick:
            return shots
        driver.get(f"{base}/launch?model=tiny-a.gguf")
        wait_for(driver, "code, pre", 20)
        shots.append(shoot(driver, out, "launch", full=True))
        driver.get(f"{base}/downloads")
        wait_for(driver, ".q-linear-progress", 20)
        shots.append(shoot(driver, out, "downloads", settle=2.0))
        driver.get(f"{base}/playground")
        wait_for(driver, "textarea", 20)
        prompt = driver.find_elements(By.CSS_SELECTOR, "textarea")[-1]
        prompt.send_keys("Recite the alphabet")
        prompt.send_keys(Keys.ENTER)
        wait_for(driver, "body", 60, text="tok/s")
        shots.append(shoot(driver, out, "playground"))
        driver.get(f"{base}/activity")
        wait_for(driver, ".q-table", 20)
        shots.append(shoot(driver, out, "activity", settle=2.0))
        driver.get(f"{base}/keys")
        wait_for(driver, ".q-table", 20)
        shots.append(shoot(driver, out, "keys", settle=1.5))
        driver.get(f"{base}/settings")
        wait_for(driver, "input", 20)
        shots.append(shoot(driver, out, "settings", full=True))
        driver.get(f"{base}/system")
        wait_for(driver, "body", 20, text="LlamaMan log")
        shots.append(shoot(driver, out, "system", settle=1.5))
        # The theme toggle cycles auto → dark → light; one click gives the dark theme.
        driver.get(f"{base}/")
        wait_for(driver, "body", 20, text="healthy")
        driver.find_element(By.XPATH, "//button[.//i[text()='brightness_auto']]").click()
        time.sleep(0.5)
        driver.refresh()  # the choice is remembered per browser; a reload also drops the tooltip
        wait_for(driver, "body", 20, text="healthy")
        shots.append(shoot(driver, out, "instances-dark", settle=2.0))
        for page, name in (("/playground", "playground-dark"), ("/activity", "activity-dark")):
            driver.get(base + page)
            wait_for(driver, "h1", 20)
            shots.append(shoot(driver, out, name, settle=2.0))
    except Exception:
        shoot(driver, out, "failed-here", settle=0)  # what the browser showed when it gave up
        raise
    finally:
        driver.quit()
    return shots


def capture_phone(base: str, out: Path, profile: Path) -> list[Path]:
    """The main pages on a 390 px phone (mobile viewport), light, then the instances page dark."""
    from selenium.webdriver.common.by import By

    driver = browser(profile, PHONE)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 2, "mobile": True},
    )
    shots: list[Path] = []
    try:
        driver.get(f"{base}/")
        wait_for(driver, "input", 30)
        shots.append(shoot(driver, out, "login-phone"))
        sign_in(driver, base)
        wait_for(driver, "body", 30, text="healthy")
        shots.append(shoot(driver, out, "instances-phone", settle=2.5))
        for page in ("launch", "playground", "activity", "keys"):
            driver.get(f"{base}/{page}")
            wait_for(driver, "h1", 20)
            shots.append(shoot(driver, out, f"{page}-phone", settle=2.0))
        driver.get(f"{base}/")
        wait_for(driver, "body", 20, text="healthy")
        driver.find_element(By.CSS_SELECTOR, "[aria-label='Account and theme']").click()
        time.sleep(0.6)
        shots.append(shoot(driver, out, "menu-phone", settle=0.5))
        driver.find_element(By.XPATH, "//*[starts-with(normalize-space(.), 'Theme:')]").click()
        time.sleep(0.5)
        driver.refresh()
        wait_for(driver, "body", 20, text="healthy")
        shots.append(shoot(driver, out, "instances-phone-dark", settle=2.0))
    except Exception:
        shoot(driver, out, "failed-here-phone", settle=0)
        raise
    finally:
        driver.quit()
    return shots


def fake_hub() -> FakeHub:
    hub = FakeHub()
    hub.add_model("team/small-GGUF", "small-Q8_0.gguf", "A")
    # Big enough, and throttled enough, to still be moving when the downloads page is captured.
    hub.add_model("team/big-GGUF", "big-Q4_K_M.gguf", "B", pad_to=200_000_000)
    hub.throttle_bps = 2_000_000
    hub.start()
    return hub


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    p.add_argument("--quick", action="store_true", help="sign-in and instances pages only, no traffic")
    p.add_argument("--fake-gpus", action="store_true", help="two stand-in GPUs for the header's gauges")
    p.add_argument("--window", default="1440x900", help="browser window, WIDTHxHEIGHT")
    args = p.parse_args(argv)
    w, h = args.window.lower().split("x")
    window = (int(w), int(h))
    if not Path(CHROMIUM).exists() or not Path(CHROMEDRIVER).exists():
        print(f"needs {CHROMIUM} and {CHROMEDRIVER}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    hub = None if args.quick else fake_hub()
    with tempfile.TemporaryDirectory(prefix="llamaman-shots-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            with running_app(tmp, hub.url if hub else None, args.fake_gpus) as base:
                seed(base, args.quick, hub)
                shots = capture(base, args.out, tmp / "chromium", args.quick, window)
                if not args.quick:
                    shots += capture_phone(base, args.out, tmp / "chromium-phone")
        finally:
            if hub is not None:
                hub.stop()
    print(f"{len(shots)} screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
