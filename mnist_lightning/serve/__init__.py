"""`python -m mnist_lightning serve`: a checkpoint behind an HTTP endpoint and a drawing page (LitServe).

    python -m mnist_lightning serve --ckpt_path CKPT                   # then open http://127.0.0.1:8000/draw
    curl -F image=@digit.png http://127.0.0.1:8000/predict
    python -m mnist_lightning serve --ckpt_path CKPT --host 0.0.0.0 --api_key KEY   # other machines: a key

The checkpoint is read as `predict` and `export` read it (weights-only; the model class, its net and
the run's input settings from the checkpoint alone; a net of your own must be importable), and each
image is prepared by `predict`'s own code. Requests that arrive together are predicted together
(LitServe's dynamic batching: `--max_batch_size`, `--batch_timeout`). docs/serving.md has the API.

This process checks the options and the checkpoint, starts the server in a process group of its own
(`process.py`; the server itself is `app.py`, its API `api.py`, its guard against bad requests
`guard.py`), prints the page's address once the model is loaded, and stops the server, workers
included, on Ctrl+C or SIGTERM.
"""

from __future__ import annotations

import dataclasses
import gc
import shlex
import signal
import socket
import sys
from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentError, ArgumentParser
from jsonargparse.typing import NonNegativeFloat, PositiveFloat, PositiveInt, restricted_number_type

from mnist_lightning.errors import UserInputError
from mnist_lightning.serve.settings import PAGE_PATH, PREDICT_PATH, ServeSettings

LOOPBACK = "127.0.0.1"
Port = restricted_number_type("Port", int, [(">=", 1024), ("<=", 65535)], join="and")  # LitServe's range
STARTUP_TIMEOUT_S = 300  # importing torch and Lightning in a worker and loading the checkpoint


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m mnist_lightning serve", exit_on_error=False, default_env=True, env_prefix="MNIST_SERVE",
        description="Serve a checkpoint: POST /predict answers image files with JSON, GET /draw is a page to draw on.",
    )
    parser.add_argument("--ckpt_path", type=str, required=True, help="a checkpoint written by `fit`")
    parser.add_argument("--host", type=Literal["127.0.0.1", "0.0.0.0", "::"], default=LOOPBACK,
                        help="address to listen on: 127.0.0.1 (this machine only), 0.0.0.0 or :: (all IPv4 / IPv6 "
                             "interfaces, which needs --api_key)")
    parser.add_argument("--port", type=Port, default=8000, help="port to listen on")
    parser.add_argument("--api_key", type=str | None, default=None,
                        help="require this key from clients (header X-API-Key); the page asks for it. Prefer the "
                             "environment variable MNIST_SERVE_API_KEY: a command line is visible to other users")
    parser.add_argument("--max_batch_size", type=PositiveInt, default=16,
                        help="requests predicted together at most (LitServe's dynamic batching; 1: none)")
    parser.add_argument("--batch_timeout", type=NonNegativeFloat, default=0.001,
                        help="seconds a batch waits for more requests before it is predicted")
    parser.add_argument("--max_body_mb", type=PositiveFloat, default=16.0,
                        help="largest request body in MiB; larger ones are answered 413 before they are read")
    parser.add_argument("--torch_threads", type=PositiveInt, default=1,
                        help="torch's threads in the inference worker: 1 serves a small net fastest; more for a "
                             "large net on many cores")
    parser.add_argument("--accelerator", type=Literal["auto", "cpu", "cuda", "mps"], default="auto",
                        help="where the net runs (LitServe's accelerator)")
    return parser


def parse(argv: list[str]) -> tuple[ServeSettings, str | None]:
    """The options as settings, and the API key; a bad option is a UserInputError of one line."""
    try:
        args = build_parser().parse_args(argv)
    except ArgumentError as err:  # jsonargparse's message may take several lines: made one
        reason = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise UserInputError(f"{reason} (python -m mnist_lightning serve --help lists the options)") from None
    if args.host != LOOPBACK and not args.api_key:
        raise UserInputError(f"--host {args.host} accepts connections from other machines: give --api_key KEY "
                             "(or set MNIST_SERVE_API_KEY) so that only clients with the key are answered, or "
                             f"keep the default --host {LOOPBACK}.")
    return ServeSettings(ckpt_path=args.ckpt_path, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
                         batch_timeout=args.batch_timeout, max_body_mb=args.max_body_mb,
                         torch_threads=args.torch_threads, accelerator=args.accelerator), args.api_key


def check_port_free(host: str, port: int) -> None:
    """Refuse a port that another program listens on, before anything starts (as uvicorn will bind it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserInputError(
                f"cannot listen on {host} port {port} ({err.strerror}): another program may be "
                f"using it; pass another --port, e.g. --port {port + 1 if port < 65535 else 8000}."
            ) from None


def main(argv: list[str]) -> None:
    """Serve until Ctrl+C or SIGTERM; a user's mistake is a UserInputError (one line, exit 2)."""
    settings, api_key = parse(argv)
    try:  # LitServe and FastAPI load for `serve` only, and are an extra
        from mnist_lightning.serve.api import class_names
        from mnist_lightning.serve.process import ServerProcess
    except ImportError as err:
        raise UserInputError(f"serve needs the serve extra ({err}): pip install -e \".[serve]\"") from None
    from mnist_lightning.export import load_model

    model, data_hparams = load_model(settings.ckpt_path)  # a bad checkpoint is refused here, in one line
    classes = class_names(data_hparams)
    metadata = {"checkpoint": Path(settings.ckpt_path).name, "dataset": data_hparams.get("dataset", "mnist"),
                "classes": list(classes), "net": type(model.net).__name__}
    settings = dataclasses.replace(settings, metadata=metadata)
    check_port_free(settings.host, settings.port)

    print(f"Loading {settings.ckpt_path} ({metadata['net']}, {metadata['dataset']}: {len(classes)} classes) ...",
          file=sys.stderr, flush=True)
    gc.freeze()  # torch and Lightning stay loaded to the end: kept out of the collector, the exit takes no seconds
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server as Ctrl+C does
    server = ServerProcess(settings, api_key)
    try:
        problem = server.wait_ready(STARTUP_TIMEOUT_S)
        if problem:
            raise SystemExit(f"error: {problem}")
        key = f"-H {shlex.quote('X-API-Key: ' + api_key)} " if api_key else ""
        print(f"Serving {settings.ckpt_path} on {server.url}"
              + (f" (listening on {settings.host}: all interfaces)" if settings.host != LOOPBACK else ""))
        print(f"  draw on it:    {server.url}{PAGE_PATH}")
        print(f"  predict:       curl {key}-F image=@digit.png {server.url}{PREDICT_PATH}")
        print("Ctrl+C stops it.", flush=True)
        code = server.wait()
        raise SystemExit(f"error: the server process ended by itself (exit code {code}); its messages are above.")
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not interrupt the stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.stop()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    print("Stopped the server.", file=sys.stderr)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
