"""`serve` on the tutorial's net trained on the real digits, as a real server on a free port: the test digits
answered as `predict` answers them, bad requests answered with a 4xx and one line while the server goes on,
64 clients at once, and the drawing page in a real headless browser (Debian's chromium through Playwright).

One server for the module (started once per pytest-xdist worker that runs these tests), stopped at the end.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import REAL_DATA_DIR, TutorialRun, run_cli
from PIL import Image
from serving import (
    Server,
    browser,
    draw,
    multipart,
    post_image,
    raw_request,
    request,
    require,
    shown_label,
    start_server,
    unavailable,
)

from mnist_lightning.data.datamodule import MNISTDataModule
from mnist_lightning.data.idx import DATASETS, load_split
from mnist_lightning.data.images import decode_image, to_mnist
from mnist_lightning.export import load_model

pytestmark = [pytest.mark.slow, pytest.mark.real_data]
MAX_BODY_MB = 1  # small, so that a body above the limit is cheap to send


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """The first 20 images of the official test set saved as PNG files, and their true labels."""
    if not (REAL_DATA_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        unavailable(f"the official MNIST files are not in {REAL_DATA_DIR} (see README, 'Data')")
    images, labels = load_split(REAL_DATA_DIR, DATASETS["mnist"], train=False, verify_checksum=False)
    folder = tmp_path_factory.mktemp("digits")
    truth = {}
    for i in range(20):
        name = f"{i:02d}.png"
        Image.fromarray(images[i].numpy()).save(folder / name)
        truth[name] = int(labels[i])
    return folder, truth


@pytest.fixture(scope="module")
def server(tutorial_on_real_mnist: TutorialRun, tmp_path_factory: pytest.TempPathFactory) -> Server:
    require("litserve", "serve needs the serve extra")
    served = start_server(
        tutorial_on_real_mnist.last, tmp_path_factory.mktemp("serve"), "--max_body_mb", str(MAX_BODY_MB)
    )
    yield served
    served.stop()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _predict_probabilities(ckpt: Path, folder: Path) -> dict[str, torch.Tensor]:
    """What `predict` computes for each file of `folder`: its data module from the checkpoint's settings,
    Lightning's predict loop, the model's predict_step."""
    model, settings = load_model(ckpt)
    inputs = {key: settings[key] for key in MNISTDataModule.INPUT_SETTINGS if key in settings}
    datamodule = MNISTDataModule(predict_path=str(folder), **inputs)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    probabilities = torch.cat(trainer.predict(model, datamodule=datamodule))
    return {file.name: p for file, p in zip(datamodule.predict_set.files, probabilities, strict=True)}


def test_the_real_test_digits_get_predicts_own_probabilities(server, digits, tutorial_on_real_mnist, tmp_path):
    """Each of the 20 PNG files POSTed as `curl -F image=@file` would: at least 18 right, and every class's
    probability the one `predict` gives the same file (to 1e-6), its label and top probability as the CLI prints."""
    folder, truth = digits
    answers = {}
    for name in truth:
        status, answer = post_image(server.url, (folder / name).read_bytes())
        assert status == 200, answer
        answers[name] = answer
    right = sum(answers[name]["label"] == label for name, label in truth.items())
    assert right >= 18, {name: answer["label"] for name, answer in answers.items()}

    expected = _predict_probabilities(tutorial_on_real_mnist.last, folder)
    for name, answer in answers.items():
        assert answer["class_name"] == str(answer["label"])
        given = torch.tensor(answer["probabilities"], dtype=torch.float64)
        assert torch.allclose(given, expected[name].double(), rtol=0, atol=1e-6), name

    result = run_cli("predict", "--ckpt_path", str(tutorial_on_real_mnist.last), "--data.predict_path", str(folder),
                     "--predictions_csv", "p.csv", "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        answer = answers[Path(row["file"]).name]
        assert row["prediction"] == answer["class_name"]
        assert abs(float(row["probability"]) - max(answer["probabilities"])) <= 1e-6, row


def test_several_images_as_json_and_the_28x28_image_the_net_was_given(server, digits):
    """`{"images": [base64, ...]}` (a data URL too, as a browser's canvas gives) answers each in order; with
    `return_image` each answer carries the prepared digit, `to_mnist` of the file, row by row."""
    folder, truth = digits
    names = sorted(truth)[:3]
    images = [base64.b64encode((folder / name).read_bytes()).decode() for name in names]
    images[1] = "data:image/png;base64," + images[1]
    body = json.dumps({"images": images, "return_image": True}).encode()
    status, answer = request(f"{server.url}/predict", "POST", body, {"Content-Type": "application/json"})
    assert status == 200, answer
    predictions = json.loads(answer)["predictions"]
    assert [p["label"] for p in predictions] == [
        post_image(server.url, (folder / n).read_bytes())[1]["label"] for n in names
    ]
    for name, prediction in zip(names, predictions, strict=True):
        prepared = to_mnist(decode_image(folder / name))
        assert np.array_equal(np.array(prediction["image"], dtype=np.uint8), prepared), name


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces width x height but holds almost no data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_bad_requests_get_a_4xx_and_one_line_and_the_next_request_is_served(server, digits):
    """Each bad request is answered with its own 4xx and a one-line JSON reason, never a 500, and never takes the
    server down: afterwards a good request is answered, by the same processes."""
    folder, truth = digits
    png = (folder / "00.png").read_bytes()
    json_type = {"Content-Type": "application/json"}
    limit = MAX_BODY_MB * 2**20
    over_limit = f"{limit + 1:x}\r\n".encode() + b"\0" * (limit + 1) + b"\r\n0\r\n\r\n"  # one chunk, then the end
    # name: (body, headers: a dict, a raw header block (sent as is), or None to send the body as the file of a
    # multipart field `image`; the status; words of the reason)
    cases = {
        "empty body": (b"", {}, 400, "empty request body"),
        "not an image": (b"these bytes are no image at all", None, 422, "not an image"),
        "truncated PNG": (png[: len(png) // 2], None, 422, "truncated"),
        "20000x20000 PNG": (_png_header_only(20000, 20000), None, 422, "too large"),
        "blank image": (_png(Image.new("L", (64, 64), 255)), None, 422, "blank image"),
        # Refused from its Content-Length, before a byte of it is sent (as curl waits for a large upload's go-ahead).
        "body over the limit": (
            b"",
            f"Content-Type: application/json\nContent-Length: {limit + 1}\n",
            413,
            "too large",
        ),
        # No length announced: refused once more than the limit has arrived.
        "body over the limit, no length": (
            over_limit,
            "Content-Type: application/json\nTransfer-Encoding: chunked\n",
            413,
            "too large",
        ),
        "malformed JSON": (b'{"images": [', json_type, 400, "malformed JSON"),
        "JSON without images": (b'{"image": "abc"}', json_type, 400, "'images'"),
        "JSON, not base64": (b'{"images": ["not base64!"]}', json_type, 400, "not valid base64"),
        "malformed multipart": (
            b"no parts here",
            {"Content-Type": "multipart/form-data; boundary=x"},
            400,
            "multipart",
        ),
        "text, not a file": (None, None, 400, "field 'image'"),
        "another content type": (png, {"Content-Type": "image/png"}, 415, "content type"),
    }
    groups = server.groups()
    before = server.members(groups)
    table = []
    for name, (body, headers, expected, words) in cases.items():
        if headers is None:
            body, content_type = multipart({"image": body} if body is not None else {"image": "a text value"})
            headers = {"Content-Type": content_type}
        if isinstance(headers, str):
            head = f"POST /predict HTTP/1.1\nHost: 127.0.0.1\nConnection: close\n{headers}"
            status, answer = raw_request(server.port, head, body)
        else:
            status, answer = request(f"{server.url}/predict", "POST", body, headers)
        text = answer.decode()
        table.append((name, status, text))
        assert status == expected, (name, status, text)
        assert "\n" not in text and list(json.loads(text)) == ["detail"], (name, text)
        assert words in json.loads(text)["detail"], (name, text)
    status, answer = post_image(server.url, png)
    assert status == 200 and answer["label"] == truth["00.png"], answer
    assert server.members(groups) == before  # the same processes, none died or was replaced


def test_64_clients_at_once_are_all_answered_right(server, digits):
    """64 clients send at the same moment (LitServe batches them): each gets its own file's answer, the one it
    gets alone, and the 4 bad requests among them fail alone, not the requests batched with them."""
    folder, truth = digits
    names = sorted(truth)
    alone = {name: post_image(server.url, (folder / name).read_bytes())[1] for name in names}
    start = threading.Barrier(64)
    results: dict[int, tuple[int, dict]] = {}

    def client(i: int) -> None:
        image = b"not an image" if i % 16 == 5 else (folder / names[i % 20]).read_bytes()
        start.wait()
        results[i] = post_image(server.url, image)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 64
    for i, (status, answer) in sorted(results.items()):
        if i % 16 == 5:
            assert status == 422 and "not an image" in answer["detail"], (i, answer)
            continue
        expected = alone[names[i % 20]]
        assert status == 200 and answer["label"] == expected["label"], (i, answer)
        assert np.allclose(answer["probabilities"], expected["probabilities"], rtol=0, atol=1e-6), i


# ------------------------------------------------------------------------------------------------ the page
STROKES = {  # in the 280 x 280 drawing area: a 7 (the bar, then the stem) and a 1
    7: [[(70, 70), (210, 62)], [(210, 62), (165, 140), (125, 235)]],
    1: [[(125, 75), (150, 45)], [(150, 45), (148, 235)]],
}


def test_the_page_reads_a_7_and_a_1_drawn_with_the_mouse(server, tmp_path):
    """In a real headless browser, the page at /draw: a 7 and a 1 drawn with mouse strokes are shown as 7 and 1,
    beside the bars of every class and the 28x28 image the net was given; Clear empties it."""
    with browser() as chromium:
        page = chromium.new_page(viewport={"width": 820, "height": 560})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{server.url}/draw")
        page.wait_for_function("document.querySelectorAll('#bars li').length === 10")
        assert page.inner_text("#bars").split()[:2] == ["0", "0.0%"]
        for digit, strokes in STROKES.items():
            page.click("#clear")
            draw(page, strokes)
            assert shown_label(page) == str(digit)
            assert page.locator("#bars li.top .name").inner_text() == str(digit)
        seen = page.evaluate("Array.from(document.querySelector('#seen').getContext('2d')"
                             ".getImageData(0, 0, 28, 28).data.filter((v, i) => i % 4 === 0))")
        assert 20 < sum(v > 128 for v in seen) < 300  # the 1 the net was given: some ink on black
        page.screenshot(path=str(tmp_path / "page.png"))
        page.click("#clear")
        assert page.inner_text("#label") == "\u2013" and page.locator("#bars li.top").count() == 0
        assert errors == []
    assert Image.open(tmp_path / "page.png").size == (820, 560)
