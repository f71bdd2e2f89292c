"""Test helpers for `serve`: a real server on a free port, real HTTP requests, the processes it leaves.

`start_server` starts `python -m mnist_lightning serve` as a real process (forked from the test
worker's preloaded server, `forked_cli`: its own session, the real entry point) and waits until it
prints that it serves; `Server.stop` sends it what a terminal's Ctrl+C sends, and kills whatever is
left of either process group should it fail to stop, so that no test leaves a server behind.
Requests go through `http.client`, with the multipart bodies written out here, so a test controls
every byte (a broken body, a wrong header). Processes are read from /proc (Linux).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import start_forked
from forked_cli import ForkedProcess

READY_LINE = "Ctrl+C stops it."
START_TIMEOUT_S = 300  # three processes import torch and Lightning; slow on a busy 2-core machine


def unavailable(reason: str) -> None:
    """Skip the test, saying why; under CI (the CI variable set) fail it instead: CI must run it."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run this test: .ci/run installs what it needs)")
    pytest.skip(reason)


def require(module: str, why: str) -> None:
    """Import `module`, or skip (fail under CI) saying why."""
    try:
        __import__(module)
    except ImportError as err:
        unavailable(f"{why}: {err}")


def free_port() -> int:
    """A port no one listens on now (bound to port 0, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live_processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, command line) of every process that is not a zombie."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended while we looked
            continue
        if fields[0] not in ("Z", "X"):
            found[int(stat.parent.name)] = (int(fields[1]), int(fields[2]), command.strip())
    return found


@dataclass
class Server:
    """A running `serve`: its process, address and console log."""

    process: ForkedProcess
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def groups(self) -> set[int]:
        """The process groups of `serve` and of the server it started (a session of its own)."""
        processes = live_processes()
        return {self.process.pid} | {group for parent, group, _ in processes.values() if parent == self.process.pid}

    def members(self, groups: Iterable[int]) -> list[str]:
        """The live processes of these groups, as 'pid command'."""
        groups = set(groups)
        return [f"{pid} {command}" for pid, (_, group, command) in live_processes().items() if group in groups]

    def stop(self, signum: int = signal.SIGINT, timeout: float = 60) -> tuple[float, list[str]]:
        """Send `signum` to serve's process group (as a terminal's Ctrl+C does); the seconds until every process
        of both groups was gone, and those still alive after `timeout` (killed then)."""
        groups = self.groups()
        start = time.monotonic()
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:  # serve is gone already
            pass
        while self.members(groups) and time.monotonic() - start < timeout:
            time.sleep(0.05)
        elapsed, left = time.monotonic() - start, self.members(groups)
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(10)
        except Exception:  # noqa: BLE001 - reaped or not, the groups are killed
            pass
        return elapsed, left


def start_server(ckpt: Path, cwd: Path, *args: str, env: dict | None = None) -> Server:
    """`python -m mnist_lightning serve --ckpt_path CKPT --port FREE ARGS`, once it prints that it serves."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    process = start_forked("serve", "--ckpt_path", str(ckpt), "--port", str(port), *args, cwd=cwd, log=log, env=env)
    server = Server(process, port, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while READY_LINE not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop(signal.SIGKILL, timeout=5)
            raise AssertionError(f"serve did not start (exit code {process.poll()}):\n{log.read_text()[-5000:]}")
        time.sleep(0.2)
    return server


# ------------------------------------------------------------------------------------------------- HTTP
def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 60) -> tuple[int, bytes]:
    """One HTTP request on a connection of its own: status and body."""
    address = url.split("//", 1)[1]
    host_port, _, path = address.partition("/")
    host, port = host_port.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(method, "/" + path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send a request's head and body as they are (no client rules about lengths), read the answer to its end."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        try:
            connection.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        except (BrokenPipeError, ConnectionResetError):  # answered and closed before all was sent
            pass
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def multipart(fields: dict[str, bytes | str], filename: str = "digit.png") -> tuple[bytes, str]:
    """A multipart/form-data body: bytes values as files (named `filename`), str values as text fields."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    "Content-Type: application/octet-stream\r\n")
            data = value
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"\r\n', value.encode()
        parts.append(f"--{boundary}\r\n{head}\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_image(url: str, image: bytes, headers: dict[str, str] | None = None, **fields: str) -> tuple[int, dict]:
    """POST /predict with one image file in the field `image` (as `curl -F image=@digit.png`): status and JSON."""
    body, content_type = multipart({"image": image, **fields})
    status, answer = request(f"{url}/predict", "POST", body, {"Content-Type": content_type, **(headers or {})})
    return status, json.loads(answer)


# ------------------------------------------------------------------------------------------------ the page
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's: a browser is never downloaded


@contextmanager
def browser() -> Iterator[Any]:
    """Headless chromium driven by Playwright, closed at the end; skipped (failed under CI) without either."""
    require("playwright", "the page tests drive chromium through Playwright (the dev extra)")
    if not CHROMIUM.exists():
        unavailable(f"the page tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def draw(page: Any, strokes: list[list[tuple[int, int]]]) -> None:
    """Mouse strokes on the drawing area (280 x 280): press, move in small steps, release."""
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x, box["y"] + y)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=15)
        page.mouse.up()


def shown_label(page: Any) -> str:
    """The label the page shows once its answer to the latest strokes has arrived."""
    page.wait_for_function("document.querySelector('#result').dataset.pending === 'false'"
                           " && document.querySelector('#label').dataset.label !== ''", timeout=30_000)
    return page.inner_text("#label")
