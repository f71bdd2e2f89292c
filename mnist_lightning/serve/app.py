"""The server process: the LitServer with the digit API, the request guard and the drawing page.

    python -m mnist_lightning.serve.app SETTINGS_JSON     # started by `python -m mnist_lightning serve`, not by hand

`serve` starts this module in a process group of its own (`mnist_lightning.serve.process`), so that
a Ctrl+C in the terminal reaches only `serve`, which then stops this server through LitServe's
shutdown endpoint: LitServe stops its HTTP and inference worker processes itself. LitServe reads both
keys from the environment when it is imported: `LIT_SERVER_API_KEY` (clients send it as `X-API-Key`;
unset, no auth) and `LIT_SHUTDOWN_API_KEY` (a random key that only `serve` knows). Should `serve` die
without stopping it, this process notices its standard input closing and stops itself the same way.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import urllib.request
from collections.abc import Awaitable, Callable
from importlib import resources

import litserve as ls
from fastapi import FastAPI
from starlette.responses import Response

from mnist_lightning.serve.api import DigitAPI
from mnist_lightning.serve.guard import RequestGuard
from mnist_lightning.serve.settings import PAGE_PATH, PREDICT_PATH, ServeSettings, local_url

# The page and its files, at paths relative to one another, so that a reverse proxy may serve them under a prefix.
PAGE_FILES = {PAGE_PATH: ("draw.html", "text/html; charset=utf-8"), "/draw.js": ("draw.js", "text/javascript"),
              "/draw.css": ("draw.css", "text/css")}


def add_page(app: FastAPI) -> None:
    """GET /draw: the drawing page (HTML, JS and CSS shipped in the package, nothing fetched from elsewhere)."""
    page = resources.files("mnist_lightning.serve") / "page"
    for path, (name, media_type) in PAGE_FILES.items():
        app.add_api_route(path, _file_route((page / name).read_bytes(), media_type), methods=["GET"],
                          include_in_schema=False)


def _file_route(content: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def serve_file() -> Response:
        return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})

    return serve_file


def build_server(settings: ServeSettings) -> ls.LitServer:
    """The LitServer: the API on POST /predict behind the guard, /draw, and LitServe's /health, /info, /shutdown."""
    api = DigitAPI(settings.ckpt_path, settings.max_batch_size, settings.batch_timeout, settings.torch_threads)
    guard = (RequestGuard, {"path": PREDICT_PATH, "max_bytes": int(settings.max_body_mb * 2**20),
                            "api_key": os.environ.get("LIT_SERVER_API_KEY") or None})
    # No /docs: FastAPI's Swagger UI loads its scripts from a CDN, and docs/serving.md describes the API.
    server = ls.LitServer(api, accelerator=settings.accelerator, enable_shutdown_api=True, disable_openapi_url=True,
                          model_metadata=settings.metadata, middlewares=[guard])
    add_page(server.app)
    return server


def stop_when_parent_goes(settings: ServeSettings) -> None:
    """Stop this server when `serve`, which holds the other end of our standard input, is gone.

    The pipe is read on a file descriptor of its own, not through `sys.stdin`: the processes LitServe
    forks close `sys.stdin`, which would wait forever on the lock of a reader blocked in this thread.
    """
    pipe = os.dup(sys.stdin.fileno())

    def watch() -> None:
        while os.read(pipe, 4096):  # b"" at end of file: `serve` ended, however it ended
            pass
        request = urllib.request.Request(f"{local_url(settings.host, settings.port)}/shutdown", method="POST",
                                         headers={"Authorization": f"Bearer {os.environ['LIT_SHUTDOWN_API_KEY']}"})
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except OSError:  # not serving yet, or not answering: end the whole process group
            os.killpg(os.getpgrp(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-when-parent-goes", daemon=True).start()


def serve_forever(settings: ServeSettings) -> None:
    """Run the LitServer until it is shut down (LitServe's /shutdown, with the key `serve` holds)."""
    ls.configure_logging(logging.WARNING)  # not LitServe's INFO lines, one of which prints the shutdown key
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # the guard answers malformed bodies itself
    server = build_server(settings)
    stop_when_parent_goes(settings)
    gc.freeze()  # what is loaded lives as long as the process: kept out of the collector, so the end takes no seconds
    server.run(host=settings.host, port=settings.port, log_level="warning", generate_client_file=False)
    # Shut down, workers and manager included. LitServe's monitoring thread wakes every 2 s to ask the (now gone)
    # manager whether to stop, and would log a broken pipe as a crash while this process ends: nothing is left to log.
    logging.getLogger("litserve").setLevel(logging.CRITICAL + 1)


if __name__ == "__main__":
    serve_forever(ServeSettings.from_json(sys.argv[1]))
