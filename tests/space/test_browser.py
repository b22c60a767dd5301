"""End-to-end: the Space in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Upload mode: uploads a generated video, asks a question, pastes a ground-truth reference, streams,
and checks that timestamped responses, the p_response plot and the clip's StreamPro-F1 appear.
Webcam mode: Chromium's fake camera (a test pattern) streams frames; a question is asked and
responses appear as the model decides. Screenshots go to tmp_path; set
STREAMPRO_SPACE_SCREENSHOTS=DIR to also copy them there (docs/images/space*.png were made that way).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync",
    # A synthetic camera, granted without a prompt, for the webcam test.
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium (apt install chromium)"),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from streampro.space.app import build_demo

    from streampro.testing.media import save_tiny_checkpoint

    demo = build_demo(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-streampro")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_upload_ask_and_see_timestamped_responses(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from streampro.video import encode_video

    # 8 s at 1 fps: a blue-to-red sweep, so the video player shows something.
    frames = [np.full((64, 96, 3), (30 * i, 90, 240 - 30 * i), np.uint8) for i in range(8)]
    video = encode_video(tmp_path / "sweep.mp4", frames, fps=1)
    reference = {"id": "sweep", "task": "OU", "question": "Tell me when it turns red.", "question_time": 2.0,
                 "video": "sweep.mp4", "duration": 8.0, "answers": [{"text": "it is red now", "time": 6.0}]}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(served)
            page.set_input_files("#video-input input[type=file]", str(video))
            page.fill("#question textarea", reference["question"])
            page.fill("#question-time input", "2")
            page.get_by_text("Options", exact=True).click()
            # Threshold 0: the untrained tiny model answers on every turn once asked.
            page.fill("#threshold input[type=number]", "0")
            page.fill("#max-tokens input[type=number]", "16")
            page.keyboard.press("Tab")
            page.get_by_text("Score against ground truth (optional)").click()
            page.locator(".cm-content").click()
            page.keyboard.insert_text(json.dumps(reference))
            page.click("#run")
            expect(page.locator("#status textarea")).to_have_value(re.compile(r"^done · frame 8/8"), timeout=60_000)
            chat = page.locator("#chat")
            expect(chat).to_contain_text("◷ 8s")
            titles = re.findall(r"◷ (\d+)s", chat.inner_text())
            # Asked at 2 s → the turn at 2 s and every later one responds.
            assert titles == ["2", "3", "4", "5", "6", "7", "8"]
            expect(chat).to_contain_text("asked at 2s")
            expect(chat).to_contain_text(reference["question"])
            expect(page.locator("#score")).to_contain_text("StreamPro-F1")
            expect(page.locator("#plot img")).to_be_visible()
            expect(page.locator("#timeline img")).to_be_visible()
            page.locator("#chat").evaluate("el => el.scrollIntoView()")
            shot = page.screenshot(path=str(tmp_path / "space.png"), full_page=True)
        finally:
            browser.close()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    keep_screenshot(tmp_path / "space.png")


def keep_screenshot(path: Path) -> None:
    if os.environ.get("STREAMPRO_SPACE_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["STREAMPRO_SPACE_SCREENSHOTS"]) / path.name)


def test_webcam_streams_and_answers_live(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000}, permissions=["camera"])
            page = context.new_page()
            page.goto(served)
            page.get_by_role("tab", name="Webcam").click()
            page.get_by_text("Options (apply to a new session)").click()
            page.fill("#live-threshold input[type=number]", "0")  # the tiny model answers once asked
            page.fill("#live-max-tokens input[type=number]", "8")
            page.keyboard.press("Tab")
            page.get_by_text("Click to Access Webcam").click()
            page.get_by_role("button", name="capture photo").click()  # "Record": frames stream at 1 fps
            status = page.locator("#live-status textarea")
            expect(status).to_have_value(re.compile(r"^streaming · frame \d+"), timeout=30_000)
            expect(page.locator("#live-chat")).not_to_contain_text("◷")  # silent before the question
            page.fill("#live-question textarea", "Tell me when something moves")
            page.click("#live-ask")
            chat = page.locator("#live-chat")
            expect(chat).to_contain_text("asked at", timeout=30_000)
            expect(chat).to_contain_text(re.compile(r"◷ \d+s.*◷ \d+s", re.DOTALL), timeout=30_000)
            text = chat.inner_text()
            asked = int(re.search(r"asked at (\d+)s", text).group(1))
            times = [int(t) for t in re.findall(r"◷ (\d+)s", text)]
            # Responses start on the turn that carries the question and advance one turn per frame.
            assert times[0] == asked and times == list(range(asked, asked + len(times)))
            expect(page.locator("#live-plot img")).to_be_visible()
            page.screenshot(path=str(tmp_path / "space-webcam.png"), full_page=True)
        finally:
            browser.close()
    keep_screenshot(tmp_path / "space-webcam.png")
