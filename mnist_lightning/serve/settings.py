"""What `serve` was asked for, as the server process receives it, and the addresses it answers on."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

PREDICT_PATH = "/predict"
PAGE_PATH = "/draw"


@dataclass(frozen=True)
class ServeSettings:
    """`serve`'s command-line options (the API key aside: it travels in the environment), handed over as JSON."""

    ckpt_path: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 16
    batch_timeout: float = 0.001
    max_body_mb: float = 16.0
    torch_threads: int = 1
    accelerator: str = "auto"
    metadata: dict[str, Any] = field(default_factory=dict)  # shown by GET /info: the checkpoint, its classes

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        return cls(**json.loads(text))


def local_url(host: str, port: int) -> str:
    """The server's address from this machine: loopback, whichever interfaces it listens on."""
    return f"http://[::1]:{port}" if ":" in host else f"http://127.0.0.1:{port}"
