"""Screenshots of the worklist report and the web page for the README (docs/figures/).

Run: ``.venv/bin/python -m benchmarks.triage_screenshots --model runs/x/model.pt
--report runs/x/report.html [--out-dir docs/figures]``

``--report`` is a report written by ``cxr-anomaly score --report``. The page screenshot serves
the model on a loopback port, opens / in Debian's headless Chromium (``/usr/bin/chromium``,
driven by Playwright) and uploads a real NIH film, exactly as tests/test_web.py does.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from cxr_anomaly.serve import ServiceSettings, create_app, start_background_server

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
DEFAULT_FILM = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "nih_fullres" / "00000427_000.png"


def shrink_png(path: Path, width: int) -> None:
    """Resize a screenshot to ``width`` pixels wide (palette PNG) so the repository stays small."""
    with Image.open(path) as image:
        height = round(image.height * width / image.width)
        small = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    small.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    """Write report.png and page.png into the output folder."""
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--report", required=True, type=Path)
    parser.add_argument("--film", type=Path, default=DEFAULT_FILM)
    parser.add_argument("--out-dir", type=Path, default=Path("docs/figures"))
    parser.add_argument("--width", type=int, default=900, help="width of the saved screenshots")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="cxr-chromium-")
    server = start_background_server(create_app(args.model, ServiceSettings()))
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path="/usr/bin/chromium",
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1280, "height": 900},
            )
            page = context.new_page()
            page.goto(args.report.resolve().as_uri())
            page.screenshot(path=str(args.out_dir / "report.png"))
            page.goto(server.url + "/")
            page.set_input_files("#file", str(args.film))
            page.wait_for_selector("#result.shown", timeout=60_000)
            page.screenshot(path=str(args.out_dir / "page.png"), full_page=True)
            context.close()
    finally:
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)
    for name in ("report.png", "page.png"):
        shrink_png(args.out_dir / name, args.width)
        print(args.out_dir / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
