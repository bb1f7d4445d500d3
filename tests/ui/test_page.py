"""The web page in a real Chromium against a real server: draw, upload, identify, verify, correct, roll back.

Every check waits on the page's state (Playwright's `expect`), and what the page
claims is compared with the server's own answer to the same request.
"""
from __future__ import annotations

import base64
import io
import json

import pytest
import requests
from PIL import Image
from playwright.sync_api import expect

from components.pusher import records
from serving.contract import UNKNOWN_LABEL
from serving.layout import list_versions
from tests.serving.conftest import install_version, wait_for
from tests.ui.conftest import MODEL, PHONE, TOKEN, open_page
from tests.ui.models import LABELS, OPEN_SET_CUT, strip_image, two_strip_image, write_push_record

pytestmark = pytest.mark.timeout(120)

# A signature-like wave across the pad, as fractions of its width and height.
WAVE = [(0.08 + 0.028 * i, 0.5 + 0.25 * (1 if i % 4 < 2 else -1) * (i % 2)) for i in range(30)]


def open_ready(page, url: str) -> None:
    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def draw(page, points, steps: int = 3) -> None:
    """One stroke with the mouse: pointerdown, pointermoves, pointerup on the pad."""
    box = page.locator("#pad").bounding_box()
    to_xy = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in points]
    page.mouse.move(*to_xy[0])
    page.mouse.down()
    for x, y in to_xy[1:]:
        page.mouse.move(x, y, steps=steps)
    page.mouse.up()


def sent_image(request) -> tuple[dict, bytes]:
    body = request.post_data_json
    return body, base64.b64decode(body["instances"][0]["image_bytes"]["b64"], validate=True)


def shown_bars(page) -> list[tuple[str, float]]:
    rows = page.locator("#top5 li")
    return [(rows.nth(i).get_attribute("data-label"), float(rows.nth(i).get_attribute("data-probability")))
            for i in range(rows.count())]


def upload(page, name: str, data: bytes, mime: str) -> None:
    page.check("input[name=source][value=upload]")
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])


def drop(page, name: str, data: bytes, mime: str) -> None:
    """Drop a file on the drop zone, as a drag from the desktop does (a DataTransfer holding a File)."""
    page.check("input[name=source][value=upload]")
    transfer = page.evaluate_handle(
        """([name, b64, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            return transfer;
        }""", [name, base64.b64encode(data).decode(), mime])
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})


def identify(page) -> dict:
    """Click Identify; returns the :predict request's JSON body once the answer is on the page."""
    with page.expect_request(lambda r: r.url.endswith(f"/v1/models/{MODEL}:predict")) as sent:
        page.click("#identify")
    expect(page.locator("#identify-result")).to_be_visible()
    return sent.value


def test_a_drawn_signature_is_identified_as_predict_answers_for_the_same_png(page, shared_server):
    open_ready(page, shared_server.page_url)
    expect(page.locator("#serving-line")).to_contain_text("version 1 serving")
    page.focus("#pen-width")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#pen-width-value")).to_have_text("5")
    draw(page, WAVE)
    draw(page, [(0.2, 0.8), (0.5, 0.82), (0.8, 0.78)])
    expect(page.locator("#undo")).to_be_enabled()

    request = identify(page)
    body, png = sent_image(request)
    assert body["signature_name"] == "predict_label"
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (800, 320)
    grey = image.convert("L")
    assert grey.getpixel((0, 0)) == 255 and grey.getpixel((799, 319)) == 255  # white paper
    assert min(grey.getdata()) < 60  # ink

    direct = requests.post(f"{shared_server.url}/v1/models/{MODEL}:predict", json=body, timeout=60)
    assert direct.status_code == 200 and direct.headers["X-Model-Version"] == "1"
    answer = direct.json()["predictions"][0]
    ranked = sorted(range(len(LABELS)), key=lambda i: -answer["probabilities"][i])[:5]
    bars = shown_bars(page)
    assert [label for label, _ in bars] == [LABELS[i] for i in ranked]
    assert [p for _, p in bars] == pytest.approx([answer["probabilities"][i] for i in ranked], abs=1e-6)
    expect(page.locator("#top-label")).to_have_text(answer["label"])
    expect(page.locator("#top-score")).to_have_text(f"{100 * answer['score']:.1f}%")
    expect(page.locator("#answered-by")).to_have_text("Answered by version 1")

    # Undo takes the last stroke away; Clear empties the pad, and an empty pad is not sent.
    page.click("#undo")
    second = identify(page)
    assert sent_image(second)[1] != png
    page.click("#clear")
    expect(page.locator("#undo")).to_be_disabled()
    page.click("#identify")
    expect(page.locator("#identify-message")).to_have_text("Draw a signature on the pad first.")


def test_touch_strokes_draw_on_the_pad(browser, shared_server):
    context, page, errors = open_page(browser, viewport=PHONE, has_touch=True, is_mobile=True)
    try:
        open_ready(page, shared_server.page_url)
        box = page.locator("#pad").bounding_box()
        cdp = context.new_cdp_session(page)
        points = [{"x": box["x"] + box["width"] * (0.1 + 0.05 * i), "y": box["y"] + box["height"] * 0.5}
                  for i in range(12)]
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [points[0]]})
        for point in points[1:]:
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        expect(page.locator("#clear")).to_be_enabled()

        _, png = sent_image(identify(page))
        grey = Image.open(io.BytesIO(png)).convert("L")
        row = [grey.getpixel((x, 160)) for x in range(0, 800)]
        assert min(row[100:600]) < 60 and min(row[700:]) == 255  # a horizontal line from 10% to 65%
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        context.close()
    assert not errors


def test_an_uploaded_or_dropped_file_is_sent_as_it_is(page, shared_server):
    open_ready(page, shared_server.page_url)
    png = strip_image(2)
    upload(page, "grace.png", png, "image/png")
    expect(page.locator("#preview")).to_be_visible()
    _, sent = sent_image(identify(page))
    assert sent == png
    expect(page.locator("#top-label")).to_have_text("grace_hopper")

    gif = strip_image(4, fmt="GIF")
    drop(page, "margaret.gif", gif, "image/gif")
    expect(page.locator("#file-name")).to_have_text("margaret.gif")
    _, sent = sent_image(identify(page))
    assert sent == gif
    expect(page.locator("#top-label")).to_have_text("margaret_hamilton")

    drop(page, "notes.txt", b"not an image", "text/plain")
    expect(page.locator("#identify-message")).to_contain_text("is not a PNG, JPEG or GIF image")


def test_verify_is_offered_only_when_the_serving_version_exports_it(page, shared_server, ui_server):
    open_ready(page, shared_server.page_url)
    expect(page.locator("#verify")).to_be_hidden()

    server = ui_server("verify")
    open_ready(page, server.page_url)
    expect(page.locator("#verify")).to_be_visible()
    image = strip_image(1)
    upload(page, "alan.png", image, "image/png")
    page.fill("#claimed", "alan_turing")
    with page.expect_request(lambda r: r.url.endswith(":predict")) as sent:
        page.click("#verify-button")
    expect(page.locator("#verify-message")).to_contain_text("Genuine: this signature matches alan_turing")
    direct = requests.post(f"{server.url}/v1/models/{MODEL}:predict", json=sent.value.post_data_json, timeout=60)
    answer = direct.json()["predictions"][0]
    assert answer["genuine"] is True
    expect(page.locator("#verify-message")).to_contain_text(f"score {answer['score']:.3f}, threshold 0.500")

    page.fill("#claimed", "ada_lovelace")
    page.click("#verify-button")
    expect(page.locator("#verify-message")).to_contain_text("Forged: this signature does not match ada_lovelace")
    expect(page.locator("#verify-message")).to_have_attribute("data-genuine", "false")


def test_an_unknown_answer_shows_its_similarity_and_is_never_offered_as_a_signers_name(page, ui_server):
    server = ui_server("open_set")
    open_ready(page, server.page_url)
    upload(page, "two.png", two_strip_image(), "image/png")
    request = identify(page)
    answer = requests.post(f"{server.url}/v1/models/{MODEL}:predict", json=request.post_data_json,
                           timeout=60).json()["predictions"][0]
    assert answer["label"] == UNKNOWN_LABEL and answer["score"] < OPEN_SET_CUT
    nearest = LABELS[max(range(len(LABELS)), key=lambda i: answer["probabilities"][i])]
    expect(page.locator("#top-label")).to_have_text(UNKNOWN_LABEL)
    expect(page.locator("#top-score")).to_have_text(f"similarity {answer['score']:.3f}")
    expect(page.locator("#unknown-note")).to_have_text(
        f"No enrolled signer is close enough: the most likely, {nearest}, is at similarity {answer['score']:.3f} "
        "to its references.")
    expect(page.locator("#identify-result")).to_have_attribute("data-unknown", "true")
    expect(page.locator("#feedback-label")).to_have_value("")
    expect(page.locator("#feedback-send")).to_have_text("This is…")
    expect(page.locator("#claimed")).to_have_value("")

    # A signer's answer fills both in, as before.
    upload(page, "alan.png", strip_image(1), "image/png")
    identify(page)
    expect(page.locator("#top-label")).to_have_text("alan_turing")
    expect(page.locator("#identify-result")).to_have_attribute("data-unknown", "false")
    expect(page.locator("#unknown-note")).to_be_hidden()
    expect(page.locator("#feedback-label")).to_have_value("alan_turing")
    expect(page.locator("#claimed")).to_have_value("alan_turing")

    # A name the person typed stays through the next answer; an emptied field takes the answer again.
    page.fill("#feedback-label", "grace_hopper")
    upload(page, "john.png", strip_image(3), "image/png")
    identify(page)
    expect(page.locator("#top-label")).to_have_text("john_backus")
    expect(page.locator("#feedback-label")).to_have_value("grace_hopper")
    page.fill("#feedback-label", "")
    upload(page, "ada.png", strip_image(0), "image/png")
    identify(page)
    expect(page.locator("#top-label")).to_have_text("ada_lovelace")
    expect(page.locator("#feedback-label")).to_have_value("ada_lovelace")


def test_a_correction_asks_for_the_token_once_and_lands_in_the_feedback_folder(page, ui_server):
    server = ui_server(token=TOKEN)
    open_ready(page, server.page_url)
    draw(page, WAVE)
    identify(page)
    page.fill("#feedback-label", "new_signer")
    expect(page.locator("#feedback-send")).to_have_text("This is new_signer")
    with page.expect_request(lambda r: r.url.endswith(f"/v1/models/{MODEL}/feedback")) as sent:
        page.click("#feedback-send")
        expect(page.locator("#token-dialog")).to_be_visible()
        page.fill("#token", TOKEN)
        page.press("#token", "Enter")  # Enter uses the token (Cancel is not the form's default button)
    expect(page.locator("#feedback-message")).to_contain_text("Accepted: this image is saved as “new_signer”")
    assert sent.value.headers["authorization"] == f"Bearer {TOKEN}"
    name = page.locator("#feedback-message").get_attribute("data-file")
    lines = (server.feedback_dir / name).read_text().splitlines()
    record = json.loads(lines[0])
    assert len(lines) == 1 and record["label"] == "new_signer" and record["model_version"] == 1
    assert record["image"]["b64"] == sent.value.post_data_json["instances"][0]["image_bytes"]["b64"]

    # The token is kept for this tab: the second correction does not ask again.
    page.fill("#feedback-label", "ada_lovelace")
    page.click("#feedback-send")
    expect(page.locator("#feedback-message")).to_contain_text("saved as “ada_lovelace”")
    expect(page.locator("#token-dialog")).to_be_hidden()
    assert len(list(server.feedback_dir.glob("feedback-*.jsonl"))) == 2

    # A label ingestion would refuse is rejected, with the reason.
    page.fill("#feedback-label", "x" * 300)
    page.click("#feedback-send")
    expect(page.locator("#feedback-message")).to_have_text(
        "Rejected: invalid_label: label is 300 characters long; at most 256")
    assert len(list(server.feedback_dir.glob("feedback-*.jsonl"))) == 2


def test_a_wrong_token_is_refused_in_words_for_corrections_and_rollback(page, ui_server):
    server = ui_server(token=TOKEN, versions=(1, 2))
    open_ready(page, server.page_url)
    upload(page, "ada.png", strip_image(0), "image/png")
    page.fill("#feedback-label", "ada_lovelace")
    page.click("#feedback-send")
    page.fill("#token", "not-the-token")
    page.click("#token-ok")
    expect(page.locator("#feedback-message")).to_contain_text("The token was not accepted")
    assert page.evaluate("sessionStorage.getItem('signflow.token')") is None
    assert not list(server.feedback_dir.glob("feedback-*.jsonl"))

    page.click("#tab-dashboard")
    page.click("[data-rollback='2']")
    page.click("#confirm-ok")
    page.fill("#token", "still-not-the-token")
    page.click("#token-ok")
    expect(page.locator("#dashboard-message")).to_contain_text("The token was not accepted")
    assert list_versions(server.base) == [1, 2]


def test_the_dashboard_shows_a_new_version_and_rolls_it_back(page, ui_server, models):
    server = ui_server()
    open_ready(page, server.page_url + "#dashboard")
    card = page.locator(".version[data-version='1']")
    expect(card).to_have_attribute("data-status", "serving")
    expect(card).to_contain_text("run-1")
    expect(card).to_contain_text("3, 4")  # spans, from the push record
    expect(card.locator(".signer-chart li")).to_have_count(len(LABELS))
    expect(card.locator(".signer-chart li").nth(1)).to_have_text(f"{LABELS[1]}78% (7/9)")  # accuracy and count
    expect(card.locator("table.metrics")).to_contain_text("sparse_categorical_accuracy")
    expect(card).to_contain_text("The only version: it cannot be rolled back.")
    expect(page.locator("#training")).to_contain_text("12 in 2 file(s)")
    expect(page.locator("#training")).to_contain_text("pushed")

    # A push: a complete version folder appears in one rename, as the Pusher's does.
    install_version(models["plain"], server.base, 2)
    write_push_record(server.base, 2, "run-2", 0.97)
    status = f"{server.url}/signflow/status"
    assert wait_for(lambda: requests.get(status, timeout=10).json()["models"][0]["serving_version"] == 2)
    page.click("#refresh")
    expect(page.locator(".version[data-version='2']")).to_have_attribute("data-status", "serving")
    expect(card).to_have_attribute("data-status", "older")

    page.click("[data-rollback='2']")
    page.click("#confirm-dialog .dialog-cancel")
    expect(page.locator("#confirm-dialog")).to_be_hidden()
    assert list_versions(server.base) == [1, 2]
    page.click("[data-rollback='2']")
    expect(page.locator("#confirm-text")).to_have_text(
        "Take version 2 out of service? Version 1 will serve instead.")
    page.fill("#rollback-reason", "wrong signer on the demo set")
    page.click("#confirm-ok")
    expect(page.locator("#dashboard-message")).to_have_text("Rolled back version 2: now serving version 1.")
    expect(page.locator(".version[data-version='2']")).to_have_attribute("data-status", "rolled back")
    expect(card).to_have_attribute("data-status", "serving")
    expect(page.locator("#serving-line")).to_contain_text("version 1 serving")
    note = records.read_rollback_note(server.base, 2)
    assert note.reason == "wrong signer on the demo set" and note.serving_after == 1
    assert note.push.pipeline_run_id == "run-2"
    assert list_versions(server.base) == [1]


def test_errors_are_said_in_words(page, ui_server):
    # An image over the server's request limit is refused before it is sent.
    server = ui_server(max_request_bytes=4096)
    open_ready(page, server.page_url)
    big = Image.effect_noise((300, 300), 80).convert("RGB")
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    upload(page, "big.png", buffer.getvalue(), "image/png")
    page.click("#identify")
    expect(page.locator("#identify-message")).to_contain_text("The image is too large to send")
    expect(page.locator("#identify-message")).to_contain_text("accepts requests up to 4 KB")

    # Bytes that claim to be a PNG and are not: the server's refusal, in words.
    server = ui_server()
    open_ready(page, server.page_url)
    upload(page, "broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png")
    page.click("#identify")
    expect(page.locator("#identify-message")).to_contain_text("The server could not read this image")
    expect(page.locator("#identify-message .detail")).to_contain_text("not an acceptable image")

    # No version ready yet (an empty model folder: a server still waiting for its first push).
    empty = ui_server(versions=())
    open_ready(page, empty.page_url)
    expect(page.locator("#serving-line")).to_contain_text("no version ready yet")
    draw(page, WAVE)
    page.click("#identify")
    expect(page.locator("#identify-message")).to_contain_text("has no version ready to answer yet")

    # The server stops while the page is open.
    empty.thread.stop()
    page.click("#identify")
    expect(page.locator("#identify-message")).to_contain_text(
        "The signflow server is not answering. Check that it is running, then try again.")
    assert "Traceback" not in page.content()


def test_signflow_ui_serves_the_page_in_front_of_tf_servings_api(page, shared_server, ui_command_server):
    front = ui_command_server(shared_server.url)
    paths: list[str] = []
    page.on("request", lambda request: paths.append(request.url.removeprefix(front.url)))
    page.goto(front.url + "/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    assert page.url == front.url + "/ui/"
    expect(page.locator("#mode-note")).to_contain_text(f"TF Serving at {shared_server.url}")
    expect(page.locator("#feedback-off")).to_contain_text("needs signflow's server")
    expect(page.locator("#feedback-form")).to_be_hidden()

    upload(page, "john.png", strip_image(3), "image/png")
    identify(page)
    expect(page.locator("#top-label")).to_have_text("john_backus")
    expect(page.locator("#top5 li").first).to_have_attribute("data-label", "john_backus")
    expect(page.locator("#answered-by")).to_contain_text("version 1")
    page.click("#tab-dashboard")
    expect(page.locator("#dashboard-message")).to_contain_text("The dashboard needs signflow's server")
    assert not [path for path in paths if path.startswith("/signflow") or path.endswith("/feedback")]

    # TF Serving down: said as such.
    with_nothing_behind = ui_command_server("http://127.0.0.1:9")
    open_ready(page, with_nothing_behind.url + "/ui/")
    expect(page.locator("#serving-line")).to_contain_text("is not answering")
    page.click("#tab-signature")
    upload(page, "john.png", strip_image(3), "image/png")
    page.click("#identify")
    expect(page.locator("#identify-message")).to_contain_text("TF Serving at http://127.0.0.1:9 is not answering")


def test_controls_are_labelled_reachable_by_keyboard_and_fit_a_phone(browser, shared_server):
    context, page, errors = open_page(browser, viewport=PHONE)
    try:
        open_ready(page, shared_server.page_url)
        unnamed = page.evaluate("""() => [...document.querySelectorAll('button, input, select, canvas, [role=tab]')]
            .filter((node) => node.offsetParent !== null || node.type === 'file')
            .filter((node) => !(node.getAttribute('aria-label') || (node.labels && node.labels.length)
                                || node.textContent.trim()))
            .map((node) => node.outerHTML)""")
        assert unnamed == []
        reached = []
        for _ in range(25):
            page.keyboard.press("Tab")
            reached.append(page.evaluate("document.activeElement.id || document.activeElement.name"))
        assert {"tab-signature", "pen-width", "identify", "feedback-label"} <= set(reached)
        page.keyboard.press("Shift+Tab")
        for panel in ("signature", "dashboard"):
            page.click(f"#tab-{panel}")
            expect(page.locator(f"#panel-{panel}")).to_be_visible()
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), panel
        page.focus("#tab-dashboard")
        page.keyboard.press("ArrowLeft")
        expect(page.locator("#tab-signature")).to_be_focused()
        expect(page.locator("#panel-signature")).to_be_visible()
    finally:
        context.close()
    assert not errors
