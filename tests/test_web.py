"""The web page at / in a real headless Chromium, driven by Playwright.

The browser is Debian's ``/usr/bin/chromium`` or Playwright's own download, whichever ``make
browser`` installed; ``make test`` installs neither, so without one these tests skip and say how
to get one.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from cxr_anomaly.serve import BackgroundServer, ServiceSettings, create_app, start_background_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "page-token-51e2"
NO_BROWSER = (
    "no Chromium for the page test (looked for {system} and Playwright's own download): "
    "run `make browser` to install one (Debian's chromium as root, else Playwright's download), "
    "as .ci/run does"
)


def playwright_chromium() -> Path | None:
    """Where Playwright's own Chromium download lives (whether or not it has been downloaded)."""
    from playwright import sync_api as playwright_api  # in the dev extra: missing it is a failure, not a skip

    with playwright_api.sync_playwright() as playwright:
        location = playwright.chromium.executable_path
    return Path(location) if location else None


def locate_chromium(system: Path = CHROMIUM, downloaded: Callable[[], Path | None] = playwright_chromium) -> Path:
    """Debian's Chromium, else Playwright's download; skip naming `make browser` when neither is there."""
    if system.is_file():
        return system
    own = downloaded()
    if own is not None and own.is_file():
        return own
    pytest.skip(NO_BROWSER.format(system=system))


def test_without_a_browser_the_page_tests_skip_naming_make_browser(tmp_path: Path) -> None:
    with pytest.raises(pytest.skip.Exception, match=r"run `make browser` to install one") as skipped:
        locate_chromium(tmp_path / "chromium", lambda: tmp_path / "ms-playwright" / "chrome")
    assert str(tmp_path / "chromium") in str(skipped.value)


def test_a_browser_found_is_the_one_used(tmp_path: Path) -> None:
    downloaded = tmp_path / "chrome"
    downloaded.write_bytes(b"")
    assert locate_chromium(tmp_path / "chromium", lambda: downloaded) == downloaded
    assert locate_chromium(downloaded, lambda: None) == downloaded


@pytest.fixture(scope="module")
def browser_context() -> Iterator[object]:
    """A Chromium context with a fresh profile; skipped only where no Chromium is installed."""
    chromium = locate_chromium()
    from playwright import sync_api as playwright_api

    profile = tempfile.mkdtemp(prefix="cxr-chromium-")
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(chromium), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tiny_nih_model) -> Iterator[BackgroundServer]:
    running = start_background_server(create_app(tiny_nih_model.checkpoint, ServiceSettings(token=TOKEN)))
    yield running
    running.stop()


def test_dropping_a_real_film_shows_the_same_score_as_the_api(
    browser_context, server: BackgroundServer, shared_data: Path
) -> None:
    film = shared_data / "nih1000" / "test" / "1_abnormal" / "00000211_011.png"
    expected = httpx.post(
        f"{server.url}/v1/score",
        files={"file": (film.name, film.read_bytes())},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ).json()
    page = browser_context.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#token-row", state="visible")  # /v1/model said a token is needed
    page.fill("#token", TOKEN)
    page.set_input_files("#file", str(film))
    page.wait_for_selector("#result.shown", timeout=30_000)
    assert page.text_content("#error") == ""
    assert page.text_content("#score") == f"{expected['score']:.3f}"
    assert page.text_content("#score-raw") == f"{expected['score_raw']:.4f}"
    assert page.text_content("#percentile") == f"{expected['percentile']:.1f}"
    assert page.text_content("#decision") == expected["decision"]
    assert page.text_content("#model-version") == expected["model_version"]
    assert float(page.get_attribute("#result", "data-score-raw")) == pytest.approx(expected["score_raw"], rel=1e-9)
    heatmap_width = page.evaluate("document.getElementById('heatmap').naturalWidth")
    assert heatmap_width == 64  # the NIH1000 film's own resolution
    assert expected["model_version"] in page.text_content("#model-info")
    page.close()


def test_the_page_says_when_a_film_is_outside_the_models_scope(
    browser_context, server: BackgroundServer, shared_data: Path, tmp_path: Path
) -> None:
    film = shared_data / "nih1000" / "test" / "0_normal" / "00000231_013.png"
    turned = tmp_path / "turned.png"
    Image.open(film).rotate(90, expand=True).save(turned)
    page = browser_context.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#token-row", state="visible")
    page.fill("#token", TOKEN)
    page.set_input_files("#file", str(film))
    page.wait_for_selector("#result.shown", timeout=30_000)
    assert page.text_content("#scope") == "in scope"
    page.set_input_files("#file", str(turned))
    page.wait_for_function("document.getElementById('scope').textContent.includes('rotated')", timeout=30_000)
    assert "outside the model's scope" in page.text_content("#scope")
    page.close()


def test_the_page_shows_the_api_errors_for_a_bad_file_and_a_wrong_token(
    browser_context, server: BackgroundServer, tmp_path: Path, shared_data: Path
) -> None:
    fake = tmp_path / "not-a-film.png"
    fake.write_bytes(b"GIF89a" + b"\x00" * 64)
    page = browser_context.new_page()
    page.goto(server.url + "/")
    page.fill("#token", TOKEN)
    page.set_input_files("#file", str(fake))
    page.wait_for_function("document.getElementById('error').textContent.includes('415')", timeout=30_000)
    assert "not a PNG, JPEG or DICOM" in page.text_content("#error")
    page.fill("#token", "wrong")
    page.set_input_files("#file", str(shared_data / "nih1000" / "test" / "0_normal" / "00000231_013.png"))
    page.wait_for_function("document.getElementById('error').textContent.includes('401')", timeout=30_000)
    assert "token is not valid" in page.text_content("#error")
    assert not page.is_visible("#result")
    page.close()
