"""`python -m mnist_lightning serve`: its options and refusals (in this process), the API's batches (LitAPI in
this process), and real servers on tiny runs: a user's own CNN trained on Fashion-MNIST behind an API key
(its class names, the key, the page asking for it), Ctrl+C, and a `serve` killed outright.

The real-digit checks (the test set, bad requests, 64 clients, drawing a 7 and a 1) are in test_serve_mnist.py.
"""

from __future__ import annotations

import base64
import io
import json
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY_ARGS, TrainedRun, run_cli, write_idx_dataset
from PIL import Image, ImageDraw
from serving import Server, browser, draw, post_image, request, require, shown_label, start_server

from mnist_lightning.checkpoints.files import load_checkpoint_file
from mnist_lightning.data.datamodule import MNISTDataModule
from mnist_lightning.data.idx import DATASETS

API_KEY = "s3cret-key"
MY_NETS = '''"""A user's own net, in a file of their own outside the package."""
import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(2 * width * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))
'''


def seven_png(size: int = 96) -> bytes:
    image = Image.new("L", (size, size), 255)
    ImageDraw.Draw(image).line([(20, 18), (76, 18), (40, 84)], fill=0, width=9)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _one_line_error(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------- the command
def test_a_bad_option_is_refused_in_one_line(tmp_path):
    require("litserve", "serve needs the serve extra")
    error = _one_line_error(run_cli("serve", "--ckpt_path", "x.ckpt", "--port", "80", cwd=tmp_path))
    assert "port" in error and "1024" in error and "serve --help" in error
    error = _one_line_error(run_cli("serve", "--ckpt_path", "x.ckpt", "--max_batch_size", "0", cwd=tmp_path))
    assert "max_batch_size" in error


def test_help_lists_the_options(tmp_path):
    result = run_cli("serve", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in (
        "--ckpt_path",
        "--host",
        "--port",
        "--api_key",
        "--max_batch_size",
        "--batch_timeout",
        "--max_body_mb",
    ):
        assert option in result.stdout


def test_listening_beyond_this_machine_needs_an_api_key(trained_run: TrainedRun, tmp_path):
    error = _one_line_error(run_cli("serve", "--ckpt_path", str(trained_run.last), "--host", "0.0.0.0", cwd=tmp_path))
    assert "--api_key" in error and "MNIST_SERVE_API_KEY" in error


def test_without_the_serve_extra_serve_says_how_to_install_it(tmp_path, monkeypatch):
    """LitServe is an extra: without it, `serve` is one line naming the install command (the rest of the CLI works)."""
    for name in [m for m in sys.modules if m == "litserve" or m.startswith(("litserve.", "mnist_lightning.serve."))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "litserve", None)  # what `import litserve` finds when it is not installed
    error = _one_line_error(run_cli("serve", "--ckpt_path", "x.ckpt", cwd=tmp_path))
    assert 'pip install -e ".[serve]"' in error


def test_a_checkpoint_that_cannot_be_served_is_refused_before_anything_starts(tmp_path):
    require("litserve", "serve needs the serve extra")
    error = _one_line_error(run_cli("serve", "--ckpt_path", str(tmp_path / "missing.ckpt"), cwd=tmp_path))
    assert "missing.ckpt does not exist" in error
    (tmp_path / "empty.ckpt").write_bytes(b"")
    assert "is empty" in _one_line_error(run_cli("serve", "--ckpt_path", str(tmp_path / "empty.ckpt"), cwd=tmp_path))


def test_a_port_in_use_is_refused_naming_it(trained_run: TrainedRun, tmp_path):
    require("litserve", "serve needs the serve extra")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        error = _one_line_error(
            run_cli("serve", "--ckpt_path", str(trained_run.last), "--port", str(port), cwd=tmp_path)
        )
    assert f"cannot listen on 127.0.0.1 port {port}" in error and "--port" in error


# ------------------------------------------------------------------------------------------------ the API
def _api(ckpt: Path, max_batch_size: int = 8):
    from mnist_lightning.serve.api import DigitAPI

    api = DigitAPI(str(ckpt), max_batch_size=max_batch_size, batch_timeout=0.01)
    api.setup("cpu")
    return api


def _form(image: bytes, **fields: str):
    from starlette.datastructures import FormData, UploadFile

    return FormData([("image", UploadFile(io.BytesIO(image), filename="digit.png")), *fields.items()])


def _answers(api, payloads: list) -> list[tuple[int, dict]]:
    """What LitServe's batched loop does with requests gathered together: decode each, predict once, encode each."""
    outputs = api.predict([api.decode_request(payload) for payload in payloads])
    return [(response.status_code, json.loads(response.body)) for response in map(api.encode_response, outputs)]


def test_a_request_that_cannot_be_predicted_fails_alone_in_its_batch(trained_run: TrainedRun):
    """LitServe fails a whole batch when one request raises: a bad request is carried through instead, answered
    with its own 4xx, and the requests batched with it get what they get alone."""
    require("litserve", "serve needs the serve extra")
    api = _api(trained_run.last)
    good = seven_png()
    alone = _answers(api, [_form(good)])
    batch = _answers(api, [_form(good), _form(b"not an image"), {"images": ["!"]},
                           {"images": [base64.b64encode(good).decode()] * 2}, _form(good, return_image="no")])
    assert [status for status, _ in batch] == [200, 422, 400, 200, 400]
    for answer in (batch[0][1], *batch[3][1]["predictions"]):  # the net ran on 3 images at once: equal to 1e-6
        assert answer["label"] == alone[0][1]["label"]
        assert torch.allclose(
            torch.tensor(answer["probabilities"]), torch.tensor(alone[0][1]["probabilities"]), atol=1e-6
        )
    assert batch[1][1] == {"detail": "not an image (Pillow cannot identify the format)"}
    assert len(batch[3][1]["predictions"]) == 2
    assert "return_image" in batch[4][1]["detail"]
    digits, probabilities = api.predict(api.decode_request(_form(good)))  # unbatched: one request in, one out
    assert digits.images.shape == (1, 28, 28) and torch.equal(
        probabilities[0], torch.tensor(alone[0][1]["probabilities"])
    )


def test_an_image_that_breaks_the_preparation_unforeseen_is_refused_alone(trained_run: TrainedRun, monkeypatch, caplog):
    """An error no check foresaw, in preparing one request's image, is that request's 422 (and a warning with the
    traceback for whoever runs the server), not a 500 for every request of its batch."""
    require("litserve", "serve needs the serve extra")
    from mnist_lightning.serve import api as api_module

    api = _api(trained_run.last)
    prepare = api_module.to_mnist

    def fragile(image):
        if image.size == (13, 13):
            raise RuntimeError("unforeseen")
        return prepare(image)

    monkeypatch.setattr(api_module, "to_mnist", fragile)
    odd = io.BytesIO()
    Image.new("L", (13, 13), 255).save(odd, format="PNG")
    answers = _answers(api, [_form(seven_png()), _form(odd.getvalue())])
    assert [status for status, _ in answers] == [200, 422]
    assert answers[1][1] == {"detail": "cannot prepare this image (RuntimeError: unforeseen)"}
    assert "could not prepare image" in caplog.text and "RuntimeError: unforeseen" in caplog.text


def test_deskewed_and_normalised_runs_are_served_the_input_predict_gives_them(trained_run: TrainedRun, tmp_path):
    """The run's input settings come from the checkpoint: for a run trained on deskewed, normalised digits, the
    server's probabilities are those of `predict` (its data module from the same settings, Lightning's loop)."""
    require("litserve", "serve needs the serve extra")
    checkpoint = load_checkpoint_file(trained_run.last)
    checkpoint["datamodule_hyper_parameters"].update(deskew=True, normalize=True)
    ckpt = tmp_path / "deskewed.ckpt"
    torch.save(checkpoint, ckpt)
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "seven.png").write_bytes(seven_png())

    api = _api(ckpt)
    [(status, answer)] = _answers(api, [_form(seven_png(), return_image="true")])
    assert status == 200
    settings = {key: checkpoint["datamodule_hyper_parameters"][key] for key in MNISTDataModule.INPUT_SETTINGS}
    datamodule = MNISTDataModule(predict_path=str(folder), **settings)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    [expected] = trainer.predict(api.model, datamodule=datamodule)
    assert torch.allclose(torch.tensor(answer["probabilities"], dtype=torch.float64), expected[0].double(), atol=1e-6)
    assert torch.equal(torch.tensor(answer["image"], dtype=torch.uint8), datamodule.predict_set.images[0])  # deskewed


# -------------------------------------------------------------------------- a user's CNN on Fashion-MNIST
@pytest.fixture(scope="module")
def fashion_server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    """A user's own CNN (my_nets.py outside the package, on PYTHONPATH) fitted on tiny Fashion-MNIST files,
    served to all interfaces with an API key (from the environment, as docs/serving.md advises)."""
    require("litserve", "serve needs the serve extra")
    root = tmp_path_factory.mktemp("fashion-cnn")
    (root / "user").mkdir()
    (root / "user" / "my_nets.py").write_text(MY_NETS)
    data = write_idx_dataset(root / "fashion", layout="torchvision", raw_folder="FashionMNIST/raw")
    env = {"PYTHONPATH": str(root / "user")}
    fit = run_cli("fit", "--data.dataset", "fashion_mnist", "--data.data_dir", str(data), *TINY_ARGS,
                  "--trainer.max_epochs", "1", "--model.net", "my_nets.SmallCNN", cwd=root, env=env)
    assert fit.returncode == 0, fit.stderr
    ckpt = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    served = start_server(ckpt, root, "--host", "0.0.0.0", env={**env, "MNIST_SERVE_API_KEY": API_KEY})
    yield served
    served.stop()


@pytest.mark.slow
def test_a_users_cnn_on_fashion_mnist_answers_with_its_class_names(fashion_server):
    status, answer = post_image(fashion_server.url, seven_png(), headers={"X-API-Key": API_KEY})
    assert status == 200, answer
    classes = DATASETS["fashion_mnist"].classes
    assert answer["class_name"] == classes[answer["label"]] and len(answer["probabilities"]) == len(classes)
    status, info = request(f"{fashion_server.url}/info", headers={"X-API-Key": API_KEY})
    model = json.loads(info)["model"]
    assert model["classes"] == list(classes) and model["net"] == "SmallCNN" and model["dataset"] == "fashion_mnist"
    assert "listening on 0.0.0.0" in fashion_server.log.read_text()


@pytest.mark.slow
def test_beyond_this_machine_only_clients_with_the_key_are_answered(fashion_server):
    """With --host 0.0.0.0 every endpoint but the page itself needs X-API-Key; a wrong key or none is a 401,
    whatever the body (the key is checked before the body is read)."""
    for headers in ({}, {"X-API-Key": "wrong"}):
        assert post_image(fashion_server.url, seven_png(), headers=headers)[0] == 401
        assert (
            request(
                f"{fashion_server.url}/predict", "POST", b"{broken", {**headers, "Content-Type": "application/json"}
            )[0]
            == 401
        )
        assert request(f"{fashion_server.url}/info", headers=headers)[0] == 401
    assert request(f"{fashion_server.url}/draw")[0] == 200  # it holds no data: it asks for the key
    assert post_image(fashion_server.url, seven_png(), headers={"X-API-Key": API_KEY})[0] == 200


@pytest.mark.slow
def test_the_page_asks_for_the_key_then_shows_the_class_names(fashion_server):
    with browser() as chromium:
        page = chromium.new_page()
        page.goto(f"{fashion_server.url}/draw")
        page.wait_for_selector("#key-form", state="visible")
        page.fill("#key", API_KEY)
        page.click("#key-form button")
        page.wait_for_function("document.querySelectorAll('#bars li').length === 10")
        assert page.locator("#key-form").is_hidden()
        assert page.inner_text("#what") == "a piece of clothing"
        names = page.locator("#bars .name").all_inner_texts()
        assert names == list(DATASETS["fashion_mnist"].classes)
        draw(page, [[(60, 60), (220, 60), (220, 220), (60, 220), (60, 60)]])
        assert shown_label(page) in names


# ------------------------------------------------------------------------------------------- stopping
def _port_is_free(port: int) -> bool:
    """Nothing listens on the port: a server could bind it (as uvicorn does, past the closed connections' TIME_WAIT)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.mark.slow
def test_ctrl_c_stops_the_server_and_its_workers_within_seconds(trained_run: TrainedRun, tmp_path):
    """SIGINT to serve's process group, as a terminal's Ctrl+C: every process of the server (HTTP, inference
    worker, manager) is gone within seconds, without a traceback, and the port is free again."""
    require("litserve", "serve needs the serve extra")
    server = start_server(trained_run.last, tmp_path)
    assert post_image(server.url, seven_png())[0] == 200
    groups = server.groups()
    assert len(server.members(groups)) >= 4  # serve, the LitServer, its HTTP server and inference worker at least
    seconds, left = server.stop(signal.SIGINT, timeout=30)
    assert left == [], left
    assert seconds < 10, seconds
    assert server.process.returncode == 0
    log = server.log.read_text()
    assert "Stopped the server." in log and "Traceback" not in log, log
    assert _port_is_free(server.port)


@pytest.mark.slow
def test_a_killed_serve_takes_its_server_with_it(trained_run: TrainedRun, tmp_path):
    """SIGKILL to serve alone (no chance to stop anything): the server notices and stops itself, workers
    included, instead of holding the port forever."""
    require("litserve", "serve needs the serve extra")
    server = start_server(trained_run.last, tmp_path)
    groups = server.groups()
    server.process.kill()
    deadline = time.monotonic() + 30
    while server.members(groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = server.members(groups)
    server.stop(signal.SIGKILL, timeout=1)  # whatever is left, if anything
    assert left == [], left
    assert _port_is_free(server.port)
