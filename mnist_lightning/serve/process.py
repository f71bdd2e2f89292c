"""The server as a child process group that `serve` starts, waits for and stops within seconds.

A Ctrl+C in a terminal goes to every process of the foreground process group: LitServer's own
processes (HTTP servers, inference workers, the multiprocessing manager) would all get it at once,
and LitServer's own handling of it took 20 s here before the last of them was gone. So the server
runs in a session of its own (`start_new_session`), where the terminal's signals do not reach, and
`serve` stops it the way LitServe provides: `POST /shutdown` with a key that only the two processes
know (about 2 s, workers included). A server that has not ended `STOP_GRACE_S` later gets SIGTERM,
then SIGKILL, as a process group; nothing outlives `serve`.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from mnist_lightning.serve.settings import ServeSettings, local_url

STOP_GRACE_S = 5.0  # for LitServe's own shutdown, before SIGTERM to what is left of the group
TERM_GRACE_S = 2.0  # after SIGTERM, before SIGKILL


class ServerProcess:
    """`python -m mnist_lightning.serve.app` in a session of its own; stdin is a pipe it watches for our end."""

    def __init__(self, settings: ServeSettings, api_key: str | None):
        self.settings = settings
        self.api_key = api_key
        self.url = local_url(settings.host, settings.port)
        self._shutdown_key = secrets.token_urlsafe(32)
        env = {k: v for k, v in os.environ.items() if k not in ("LIT_SERVER_API_KEY", "LIT_SHUTDOWN_API_KEY")}
        env["LIT_SHUTDOWN_API_KEY"] = self._shutdown_key
        if api_key:
            env["LIT_SERVER_API_KEY"] = api_key
        self.process = subprocess.Popen([sys.executable, "-m", "mnist_lightning.serve.app", settings.to_json()],
                                        stdin=subprocess.PIPE, env=env, start_new_session=True)

    def _get(self, path: str, timeout: float) -> int:
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url + path, headers=headers), timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code

    def wait_ready(self, timeout: float) -> str | None:
        """Wait until GET /health answers 200 (the model is loaded in every worker); else say what went wrong."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                return f"the server process ended while starting (exit code {code}); its messages are above."
            try:
                if self._get("/health", timeout=2) == 200:
                    return None
            except OSError:  # not listening yet
                pass
            time.sleep(0.2)
        return f"the server did not become ready within {timeout:.0f} s."

    def wait(self) -> int:
        """Block until the server process ends by itself; its exit code."""
        return self.process.wait()

    def stop(self) -> None:
        """LitServe's shutdown; SIGTERM, then SIGKILL, to the group if the server does not end in time."""
        if self.process.poll() is None:
            request = urllib.request.Request(self.url + "/shutdown", method="POST",
                                             headers={"Authorization": f"Bearer {self._shutdown_key}"})
            try:
                urllib.request.urlopen(request, timeout=STOP_GRACE_S).close()
            except OSError:  # still starting (503), or not answering: the signals below
                pass
        for signum, grace in ((None, STOP_GRACE_S), (signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, TERM_GRACE_S)):
            if signum is not None:
                _signal_group(self.process.pid, signum)
            try:
                self.process.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        # LitServer has joined its workers before it ends; anything of the group still running is a straggler.
        # (multiprocessing's resource tracker ignores SIGTERM and ends by itself once the server has.)
        _signal_group(self.process.pid, signal.SIGTERM)
        if self.process.stdin is not None:
            self.process.stdin.close()


def _signal_group(pgid: int, signum: int) -> None:
    """Send `signum` to the process group, which may have no member left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
