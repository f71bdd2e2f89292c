"""The drawing page's screenshot in docs/serving.md and the README: `serve` a checkpoint, draw a digit, save the page.

    python scripts/serve_screenshot.py --ckpt_path CKPT [--output docs/images/serve.png]

Starts `python -m mnist_lightning serve` on a free port, opens /draw in headless chromium (Debian's, through
Playwright: never a downloaded browser), draws a 2 with mouse strokes, waits for the answer and saves an
820 x 480 screenshot; then stops the server as Ctrl+C does.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def two() -> list[list[tuple[float, float]]]:
    """A 2 in one stroke, in the 280 x 280 drawing area: an arc over the top, a diagonal, a foot."""
    arc = [(140 + 55 * math.cos(a), 105 - 50 * math.sin(a))
           for a in (math.radians(d) for d in range(160, -50, -15))]
    return [arc + [(92, 225), (200, 222)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--output", default=str(ROOT / "docs" / "images" / "serve.png"))
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, "-m", "mnist_lightning", "serve", "--ckpt_path", args.ckpt_path,
                               "--port", str(port)], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in server.stdout:
            if "Ctrl+C stops it." in line:
                break
        else:
            raise SystemExit("serve ended before it was ready")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 820, "height": 480})
            page.goto(f"http://127.0.0.1:{port}/draw")
            page.wait_for_function("document.querySelectorAll('#bars li').length > 0")
            box = page.locator("#pad").bounding_box()
            for stroke in two():
                page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
                page.mouse.down()
                for x, y in stroke[1:]:
                    page.mouse.move(box["x"] + x, box["y"] + y, steps=6)
                page.mouse.up()
            page.wait_for_function("document.querySelector('#result').dataset.pending === 'false'"
                                   " && document.querySelector('#label').dataset.label !== ''")
            time.sleep(0.3)  # the bars' 80 ms transition
            page.screenshot(path=args.output)
            print(f"Wrote {args.output}: the page shows {page.inner_text('#label')} ({page.inner_text('#confidence')})")
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(60)


if __name__ == "__main__":
    main()
