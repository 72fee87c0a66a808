"""`fresco ui` end to end in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium): load
the page, upload a generated clip, load settings from a YAML, run the three steps with the tiny random-weight model,
and check that the result <video> plays to the end a file with the input's frame count. One screenshot per step
is saved under the test's output folder (and copied to $FRESCO_UI_SCREENSHOTS when set)."""
import base64
import os
import shutil
import tempfile
import time
import urllib.request
from fractions import Fraction
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="the web UI needs the [ui] extra (pip install -e '.[ui]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (the [ui] extra)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from fresco.video import make_synthetic_clip, probe, read_frames  # noqa: E402

pytestmark = pytest.mark.slow  # `pytest -m "not slow"`: the quick loop (README)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(f"NO BROWSER: {CHROMIUM} / {CHROMEDRIVER} missing; install Debian's chromium and chromium-driver "
                "(.ci/run does) to run the web UI test", allow_module_level=True)

N_FRAMES = 16
SETTINGS = """\
prompt: a watercolor painting
sd_path: tiny-random
size: 64x64
num_inference_steps: 2
num_warmup_steps: 1
end_opt_step: 0
opt_iters: 1
batch_size: 3
mininterv: 5
maxinterv: 5
backend: reference
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from fresco.ui.app import UI
    root = tmp_path_factory.mktemp("ui")
    ui = UI(out_root=root / "out")
    ui.build()
    url = ui.serve(block=False)
    yield ui, url, root
    ui.demo.close()


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="fresco-chromium-")
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={profile}", "--window-size=1400,1900", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _text(d, eid: str) -> str:
    return d.find_element(By.ID, eid).text


def _wait_text(d, eid: str, *needles: str, timeout: float = 120) -> str:
    """Wait until the element's text holds one of `needles`; fail with what it says (an error line) otherwise."""
    try:
        WebDriverWait(d, timeout, poll_frequency=0.2).until(lambda d: any(n in _text(d, eid) for n in needles))
    except Exception:
        pytest.fail(f"#{eid} never showed {needles}; it says: {_text(d, eid)!r}")
    return _text(d, eid)


def _shot(d, root: Path, name: str) -> None:
    """A full-page screenshot (beyond the window, through the DevTools protocol) into root/screenshots."""
    out = root / "screenshots"
    out.mkdir(exist_ok=True)
    size = d.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = d.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "clip": dict(
        x=0, y=0, width=size["width"], height=size["height"], scale=1)})
    (out / name).write_bytes(base64.b64decode(shot["data"]))
    if os.environ.get("FRESCO_UI_SCREENSHOTS"):
        dest = Path(os.environ["FRESCO_UI_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / name, dest / name)


def test_three_steps_in_a_browser(server, browser, tmp_path):
    ui, url, root = server
    d = browser
    clip = make_synthetic_clip(tmp_path / "clip.mp4", N_FRAMES, (96, 64), fps=Fraction(8))
    yaml_path = tmp_path / "settings.yaml"
    yaml_path.write_text(SETTINGS)
    t0 = time.perf_counter()
    d.get(url)
    WebDriverWait(d, 60).until(lambda d: d.find_elements(By.ID, "btn-keys"))

    # input: upload the clip; the page describes it (container frames, fps, size, processing size after settings)
    d.find_element(By.CSS_SELECTOR, "#input-video input[type=file]").send_keys(str(clip))
    _wait_text(d, "input-info", "16 frames", "fresco: error")
    assert "16 frames, 8 fps, 96x64" in _text(d, "input-info")
    # settings from the published-style YAML (the upload button's file input)
    d.find_element(By.CSS_SELECTOR, "#btn-load input[type=file], input[type=file][accept*='.yaml']").send_keys(
        str(yaml_path))
    _wait_text(d, "status", "settings loaded", "fresco: error")
    assert d.find_element(By.CSS_SELECTOR, "#set-prompt textarea").get_attribute("value") == "a watercolor painting"

    # step 1: keyframes at a fixed interval of 5 -> 0, 5, 10, 15 in 2 batches of 3
    d.find_element(By.ID, "btn-keys").click()
    plan = _wait_text(d, "plan", "batch(es)", "fresco: error")
    assert "4 keyframes of 16 frames in 2 batch(es)" in plan, plan
    WebDriverWait(d, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#plan-gallery img")) >= 4)
    _shot(d, root, "step1-keyframes.png")

    # step 2: render the keyframes; the status line reports batch and step, the gallery fills in
    d.find_element(By.ID, "tab-render-button").click()
    d.find_element(By.ID, "btn-render").click()
    seen = set()
    deadline = time.time() + 240
    while time.time() < deadline:
        s = _text(d, "status")
        if "batch" in s and "step" in s:
            seen.add(s.split("\n")[0])
        if "keyframes done" in s or "fresco: error" in s:
            break
        time.sleep(0.1)
    status = _text(d, "status")
    assert "keyframes done: 4 keys in 2 batch(es)" in status, status
    WebDriverWait(d, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#keys-gallery img")) == 4)
    _shot(d, root, "step2-render-keyframes.png")
    assert not (root / "out" / "clip" / "video.mp4").exists()  # keyframes only

    # step 3: propagate; the result video plays beside the input, downloads are enabled
    d.find_element(By.ID, "tab-propagate-button").click()
    d.find_element(By.ID, "btn-propagate").click()
    status = _wait_text(d, "status", f"done: {N_FRAMES} frames", "fresco: error", timeout=240)
    assert f"done: {N_FRAMES} frames, 8 fps, 64x64" in status, status
    WebDriverWait(d, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#result-video video[src]"))
    video = d.find_element(By.CSS_SELECTOR, "#result-video video")
    played = d.execute_async_script("""
        const v = arguments[0], done = arguments[arguments.length - 1];
        v.muted = true;
        const finish = () => done({ended: v.ended, t: v.currentTime, duration: v.duration,
                                   frames: v.getVideoPlaybackQuality().totalVideoFrames, w: v.videoWidth});
        v.addEventListener('ended', finish, {once: true});
        v.currentTime = 0;
        v.play().catch(e => done({error: String(e)}));
        setTimeout(finish, 15000);""", video)
    assert played.get("ended"), played
    assert played["w"] == 64 and abs(played["duration"] * 8 - N_FRAMES) < 0.5, played
    _shot(d, root, "step3-propagate.png")
    # the file the <video> plays has the input's frame count
    src = video.get_attribute("src")
    dest = tmp_path / "served.mp4"
    with urllib.request.urlopen(src) as r:
        dest.write_bytes(r.read())
    assert sum(1 for _ in read_frames(dest)) == probe(clip).n_frames == N_FRAMES
    for eid in ("dl-video", "dl-keys", "dl-preview"):
        assert d.find_element(By.ID, eid).is_enabled(), eid
    print(f"browser test: three steps in {time.perf_counter() - t0:.1f} s; status lines seen: {sorted(seen)}")
