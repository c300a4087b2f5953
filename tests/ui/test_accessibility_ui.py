"""Every page in headless Chromium, on a desktop window (light and dark) and a 390 px phone:
axe-core finds no serious or critical violation, nothing scrolls sideways on the phone, and signing
out stays reachable there.

The real app runs as ``python main.py`` (the screenshot script's harness); axe-core comes from a pinned
package (``axe-playwright-python`` ships ``axe.min.js``) and is injected with ``execute_script``, so
the test needs no network. Skipped without Chromium unless CI is set (CI must have it)."""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["/", "/launch", "/downloads", "/playground", "/activity", "/nodes", "/keys", "/settings", "/system"]
PHONE = (390, 844)
DESKTOP = (1280, 900)


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("take_screenshots", ROOT / "docs" / "take_screenshots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _axe_source() -> str:
    axe = pytest.importorskip("axe_playwright_python", reason="the test extra ships axe-core")
    return (Path(axe.__file__).parent / "axe.min.js").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def app_url() -> Iterator[tuple[ModuleType, str, Path]]:
    shots = _harness()
    if not (Path(shots.CHROMIUM).exists() and Path(shots.CHROMEDRIVER).exists()):
        if os.environ.get("CI"):
            pytest.fail("CI needs chromium and chromedriver for the accessibility test")
        pytest.skip("chromium / chromedriver not installed")
    with tempfile.TemporaryDirectory(prefix="llamaman-a11y-") as tmp_name:
        tmp = Path(tmp_name)
        with shots.running_app(tmp, None) as base:
            shots.seed(base, True, None)
            yield shots, base, tmp


def _settled(driver: Any, path: str) -> None:
    """Wait until the page's content has rendered (NiceGUI builds it over its websocket)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && !!document.querySelector('h1')"
            " && !document.querySelector('#app:empty')"
        )
    )
    time.sleep(0.8)  # transitions (drawers, tabs) end before contrast is measured


def _violations(driver: Any, axe: str) -> list[str]:
    if not driver.execute_script("return typeof window.axe !== 'undefined'"):
        driver.execute_script(axe)
    result = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations.map(v => ({
            id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.slice(0, 4).map(n => n.target.join(' ') + ' ' + n.html.slice(0, 160))
        })))).catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));
        """
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']}; " + " | ".join(v["nodes"])
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


def _choose_dark(driver: Any) -> None:
    """The theme button cycles follow-the-browser → dark; the choice is kept for this browser."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _settled(driver, "/")
    driver.find_element(By.CSS_SELECTOR, "button[aria-label^='Theme:']").click()
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script("return document.body.classList.contains('body--dark')")
    )


def _browser(shots: ModuleType, tmp: Path, name: str, size: tuple[int, int]) -> Any:
    driver = shots.browser(tmp / f"chromium-{name}", size)
    if size == PHONE:
        # A phone: its width, touch, and the mobile viewport rules (meta viewport honoured).
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": size[0], "height": size[1], "deviceScaleFactor": 2, "mobile": True},
        )
    driver.set_script_timeout(60)
    return driver


@pytest.mark.timeout(600)
@pytest.mark.parametrize("device", ["desktop", "phone", "desktop-dark"])
def test_every_page_passes_axe_and_fits_the_screen(
    app_url: tuple[ModuleType, str, Path], device: str
) -> None:
    shots, base, tmp = app_url
    axe = _axe_source()
    size = PHONE if device == "phone" else DESKTOP
    driver = _browser(shots, tmp, device, size)
    problems: dict[str, list[str]] = {}
    try:
        driver.get(f"{base}/login")
        _settled(driver, "/login")
        found = _violations(driver, axe)
        if found:
            problems["/login"] = found
        shots.sign_in(driver, base)
        if device.endswith("-dark"):
            _choose_dark(driver)
        for path in PAGES:
            driver.get(base + path)
            _settled(driver, path)
            found = _violations(driver, axe)
            if device == "phone":
                wide = driver.execute_script(
                    "const d = document.documentElement; return [d.scrollWidth, d.clientWidth];"
                )
                if wide[0] > wide[1]:
                    culprits = driver.execute_script(
                        "const w = document.documentElement.clientWidth;"
                        "return [...document.querySelectorAll('body *')]"
                        ".filter(e => e.getBoundingClientRect().right > w + 1)"
                        ".slice(0, 5).map(e => e.tagName + '.' + e.className);"
                    )
                    found.append(f"scrolls sideways: {wide[0]} > {wide[1]} px, e.g. {culprits}")
            if found:
                problems[path] = found
    finally:
        driver.quit()
    report = "\n".join(f"{page}:\n  " + "\n  ".join(found) for page, found in problems.items())
    assert not problems, report


@pytest.mark.timeout(300)
def test_sign_out_is_reachable_on_a_phone(app_url: tuple[ModuleType, str, Path]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shots, base, tmp = app_url
    driver = _browser(shots, tmp, "phone-signout", PHONE)
    try:
        driver.get(f"{base}/login")
        _settled(driver, "/login")
        shots.sign_in(driver, base)
        _settled(driver, "/")
        menu = driver.find_element(By.CSS_SELECTOR, "[aria-label='Account and theme']")
        assert menu.is_displayed()
        right = driver.execute_script("return arguments[0].getBoundingClientRect().right", menu)
        assert right <= PHONE[0]
        menu.click()
        WebDriverWait(driver, 10).until(
            lambda d: any(e.is_displayed() for e in d.find_elements(By.XPATH, "//*[text()='Sign out']"))
        )
        next(e for e in driver.find_elements(By.XPATH, "//*[text()='Sign out']") if e.is_displayed()).click()
        WebDriverWait(driver, 20).until(lambda d: "/login" in d.current_url)
        driver.get(f"{base}/keys")
        WebDriverWait(driver, 20).until(lambda d: "/login" in d.current_url)  # the session really ended
    finally:
        driver.quit()
