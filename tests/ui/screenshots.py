"""Screenshots of every screen of the web page, at desktop and phone width, for a person to look at.

    PYTHONPATH=. .venv/bin/python tests/ui/screenshots.py [OUT_DIR]     (default /tmp/ui-shots)

Starts real servers on tiny models (tests/ui/models.py) as the browser tests do, and
writes <screen>-desktop.png (1280x800) and <screen>-phone.png (390x844), full page.
Not a test (pytest does not collect it) and nothing it writes is committed.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.serving.conftest import install_version, wait_for  # noqa: E402
from tests.ui.conftest import DESKTOP, PHONE, TOKEN, WAIT_MS, AppServer, chromium_path, start_ui_server  # noqa: E402
from tests.ui.models import build_model, strip_image, two_strip_image, write_push_record  # noqa: E402

WAVE = [(0.06 + 0.03 * i, 0.45 + 0.22 * ((i % 4) - 1.5) / 1.5) for i in range(29)]


def draw(page, points) -> None:
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + points[0][0] * box["width"], box["y"] + points[0][1] * box["height"])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=4)
    page.mouse.up()


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ui-shots-"))
    plain, verifying = build_model(work / "plain"), build_model(work / "verify", verify=True)
    plain_server = start_ui_server(work / "plain-server", plain, versions=(1, 2))
    verify_server = start_ui_server(work / "verify-server", verifying, token=TOKEN)
    open_set_server = start_ui_server(work / "open-set-server", build_model(work / "open_set", verify=True,
                                                                             open_set=True))
    # Version 3 pushed, then rolled back: the dashboard shows all three kinds.
    install_version(plain, plain_server.base, 3)
    write_push_record(plain_server.base, 3, "run-3", 0.88)
    import requests

    status = f"{plain_server.url}/signflow/status"
    wait_for(lambda: requests.get(status, timeout=10).json()["models"][0]["serving_version"] == 3)
    requests.post(f"{plain_server.url}/signflow/models/signatures/rollback", json={"reason": "accuracy dropped for "
                  "two signers on the new span"}, timeout=30).raise_for_status()
    from serving.ui_command import create_app

    front = AppServer(create_app(plain_server.url, ["signatures"])).start()
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=args)
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            def page_at(url: str):
                context = browser.new_context(viewport=viewport, device_scale_factor=1)
                context.set_default_timeout(WAIT_MS)
                page = context.new_page()
                page.goto(url)
                expect(page.locator("body")).to_have_attribute("data-ready", "true")
                return page

            def shot(page, name: str) -> None:
                path = out / f"{name}-{size}.png"
                page.screenshot(path=str(path), full_page=True)
                print(path)

            page = page_at(plain_server.url + "/ui/")
            shot(page, "1-start-verify-hidden")
            draw(page, WAVE)
            draw(page, [(0.15, 0.8), (0.45, 0.83), (0.75, 0.79)])
            page.click("#identify")
            expect(page.locator("#identify-result")).to_be_visible()
            shot(page, "2-identify-result")
            page.fill("#feedback-label", "grace_hopper")
            page.click("#feedback-send")
            expect(page.locator("#feedback-message")).to_contain_text("Accepted")
            shot(page, "3-feedback-accepted")
            page.click("#tab-dashboard")
            expect(page.locator(".version[data-version='3']")).to_be_visible()
            shot(page, "4-dashboard")
            page.click("[data-rollback='2']")
            page.fill("#rollback-reason", "signer_02 confused with signer_05")
            shot(page, "5-rollback-confirm")
            page.context.close()

            page = page_at(verify_server.url + "/ui/")
            page.check("input[name=source][value=upload]")
            page.set_input_files("#file", files=[{"name": "alan.png", "mimeType": "image/png",
                                                  "buffer": strip_image(1)}])
            page.click("#identify")
            expect(page.locator("#identify-result")).to_be_visible()
            page.fill("#claimed", "grace_hopper")
            page.click("#verify-button")
            expect(page.locator("#verify-message")).to_contain_text("Forged")
            shot(page, "6-verify-shown-forged")
            page.fill("#feedback-label", "alan_turing")
            page.click("#feedback-send")
            expect(page.locator("#token-dialog")).to_be_visible()
            page.fill("#token", "a-wrong-token")
            shot(page, "7-token-dialog")
            page.click("#token-ok")
            expect(page.locator("#feedback-message")).to_contain_text("not accepted")
            shot(page, "8-error-bad-token")
            page.context.close()

            page = page_at(plain_server.url + "/ui/")
            draw(page, WAVE)
            page.route("**/v1/**", lambda route: route.abort("connectionrefused"))
            page.click("#identify")
            expect(page.locator("#identify-message")).to_contain_text("not answering")
            shot(page, "9-error-server-down")
            page.context.close()

            page = page_at(front.url + "/ui/")
            page.check("input[name=source][value=upload]")
            page.set_input_files("#file", files=[{"name": "john.png", "mimeType": "image/png",
                                                  "buffer": strip_image(3)}])
            page.click("#identify")
            expect(page.locator("#identify-result")).to_be_visible()
            shot(page, "10-tf-serving-mode")
            page.context.close()

            page = page_at(open_set_server.url + "/ui/")
            page.check("input[name=source][value=upload]")
            page.set_input_files("#file", files=[{"name": "stranger.png", "mimeType": "image/png",
                                                  "buffer": two_strip_image()}])
            page.click("#identify")
            expect(page.locator("#identify-result")).to_have_attribute("data-unknown", "true")
            shot(page, "11-unknown-signer")
            page.context.close()
        browser.close()
    front.stop()
    plain_server.thread.stop()
    verify_server.thread.stop()
    open_set_server.thread.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/ui-shots")))
