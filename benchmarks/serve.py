"""Serving benchmark: `python -m mnist_lightning serve` (LitServe, with and without batching) against a minimal
FastAPI + uvicorn endpoint that calls the same net in-process, under load from wrk.

    python benchmarks/serve.py --ckpt_path CKPT [--duration 10] [--clients 1 8 64] [--max_batch_size 16]

Three servers, one after the other, on 127.0.0.1 and a free port each:
  minimal    FastAPI + uvicorn, one process: `POST /predict` parses the multipart body and runs, inline
             on the event loop, the same per-request work as the served API (`DigitAPI`'s decode_request,
             predict and encode_response: `predict`'s preparation of the image, the net, the JSON):
             the HTTP floor of this machine
  litserve   `python -m mnist_lightning serve --max_batch_size 1` (no batching)
  batched    `python -m mnist_lightning serve --max_batch_size N --batch_timeout T`
Each is warmed up (2 s), then loaded by wrk (Debian's `wrk`, not Python: it does not compete for the GIL
of the servers it measures) for `--duration` seconds at each number of clients (connections, keep-alive),
every request the same multipart upload of a JPEG digit (a Lua script builds the body). Reported:
requests per second, p50 and p99 latency (wrk's --latency), non-2xx answers, and `/proc/loadavg` before
and after. The goal it checks: at 64 clients, batched LitServe at least 0.8x the minimal endpoint's
throughput and at most 0.5x its p99. Loopback only; each wrk run is bounded by `--duration` and a 5 s
request timeout.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from starlette.requests import Request  # FastAPI reads the endpoint's annotations from this module's names
from starlette.responses import Response

ROOT = Path(__file__).resolve().parent.parent
LUA = """-- wrk: every request the same multipart upload of one image file in the field `image`
local file = assert(io.open("{image}", "rb"))
local image = file:read("*all")
file:close()
local boundary = "mnist-bench-boundary"
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\\r\\n"
    .. 'Content-Disposition: form-data; name="image"; filename="digit.jpg"\\r\\n'
    .. "Content-Type: image/jpeg\\r\\n\\r\\n" .. image .. "\\r\\n--" .. boundary .. "--\\r\\n"
"""


def minimal_server(ckpt_path: str, port: int) -> None:
    """The floor: FastAPI + uvicorn, the served API's per-request work called inline, no LitServe."""
    import uvicorn
    from fastapi import FastAPI

    from mnist_lightning.serve.api import DigitAPI

    api = DigitAPI(ckpt_path)
    api.setup("cpu")
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        return api.encode_response(api.predict(api.decode_request(await request.form())))

    @app.get("/health")
    async def health() -> Response:
        return Response("ok")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server ended while starting (exit code {process.returncode})")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server at {url} did not become ready within {timeout:.0f} s")


def start(name: str, args: argparse.Namespace, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if name == "minimal":
        command = [sys.executable, __file__, "--minimal_server", "--ckpt_path", args.ckpt_path, "--port", str(port)]
    else:
        batching = (["--max_batch_size", "1"] if name == "litserve" else
                    ["--max_batch_size", str(args.max_batch_size), "--batch_timeout", str(args.batch_timeout)])
        command = [sys.executable, "-m", "mnist_lightning", "serve", "--ckpt_path", args.ckpt_path, "--port", str(port),
                   *batching]
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL)


def stop(process: subprocess.Popen) -> None:
    """Ctrl+C to the server's process group, as a terminal would (serve stops its own server group)."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def seconds(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def wrk(url: str, script: Path, clients: int, duration: float) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 latency (s), non-2xx answers, socket errors."""
    threads = min(2, clients)
    result = subprocess.run(["wrk", f"-t{threads}", f"-c{clients}", f"-d{duration:g}s", "--timeout", "5s", "--latency",
                             "-s", str(script), f"{url}/predict"], capture_output=True, text=True,
                            timeout=duration + 60)
    out = result.stdout
    if result.returncode != 0 or "Requests/sec" not in out:
        raise SystemExit(f"wrk failed:\n{out}\n{result.stderr}")
    percentile = {p: seconds(v, u) for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": percentile["50"],
            "p99": percentile["99"], "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "errors": sum(map(int, errors.groups())) if errors else 0}


def digit_jpeg(folder: Path) -> Path:
    """A handwritten-looking 7 as a JPEG, the body of every request."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (112, 112), 255)
    ImageDraw.Draw(image).line([(22, 22), (88, 18), (70, 50), (44, 96)], fill=20, width=9, joint="curve")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    path = folder / "digit.jpg"
    path.write_bytes(buffer.getvalue())
    return path


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `fit`")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64], help="concurrent connections")
    parser.add_argument("--max_batch_size", type=int, default=16, help="of the batched LitServe server")
    parser.add_argument("--batch_timeout", type=float, default=0.001, help="of the batched LitServe server (s)")
    parser.add_argument("--servers", nargs="+", default=["minimal", "litserve", "batched"],
                        choices=["minimal", "litserve", "batched"])
    parser.add_argument("--minimal_server", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.minimal_server:
        minimal_server(args.ckpt_path, args.port)
        return

    results: dict[tuple[str, int], dict[str, float]] = {}
    print(f"load average before: {loadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        script = Path(scratch) / "upload.lua"
        script.write_text(LUA.format(image=digit_jpeg(Path(scratch))))
        for name in args.servers:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            process = start(name, args, port)
            try:
                wait_ready(url, process)
                wrk(url, script, 8, 2)  # warm-up
                for clients in args.clients:
                    results[name, clients] = wrk(url, script, clients, args.duration)
                    r = results[name, clients]
                    print(f"{name:9} {clients:3} clients: {r['rps']:7.0f} req/s  p50 {1e3 * r['p50']:7.1f} ms  "
                          f"p99 {1e3 * r['p99']:7.1f} ms  non-2xx {r['non_2xx']}  errors {r['errors']}  "
                          f"(load {loadavg().split()[0]})", flush=True)
            finally:
                stop(process)
    print(f"load average after: {loadavg()}")

    print("\n| clients | server | requests/s | p50 (ms) | p99 (ms) |\n|---|---|---|---|---|")
    for clients in args.clients:
        for name in args.servers:
            r = results[name, clients]
            print(f"| {clients} | {name} | {r['rps']:.0f} | {1e3 * r['p50']:.1f} | {1e3 * r['p99']:.1f} |")
    if {"minimal", "batched"} <= set(args.servers) and 64 in args.clients:
        floor, batched = results["minimal", 64], results["batched", 64]
        throughput, tail = batched["rps"] / floor["rps"], batched["p99"] / floor["p99"]
        met = throughput >= 0.8 and tail <= 0.5
        print(f"\nat 64 clients, batched LitServe / minimal endpoint: throughput {throughput:.2f}x (goal >= 0.8), "
              f"p99 {tail:.2f}x (goal <= 0.5): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
