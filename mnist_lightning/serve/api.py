"""The LitAPI: uploaded images through `predict`'s own preparation and the checkpoint's net, answered as JSON.

    curl -F image=@digit.png http://127.0.0.1:8000/predict
    curl -H "Content-Type: application/json" -d '{"images": ["iVBORw0KGgo..."]}' http://127.0.0.1:8000/predict

An image goes the way `predict` takes a file: `images.decode_image` (the same limits and reasons as
`read_image`), `images.to_mnist`, `images.digit_tensor` (deskewed when the run was), then
`InMemoryDigits` scales it as the training data was and `MNISTClassifier.predict_step` gives the
probabilities. The checkpoint is read by `export.load_model`, weights-only, as `export` reads it.

LitServe runs `decode_request` for each request in its inference worker and, when batching, `predict`
once for the requests it gathered; an exception there would fail every request of the batch. So a
request that cannot be predicted is not raised but carried through as a `Rejected` value, and
`encode_response` turns it into that request's own 4xx answer.
"""

from __future__ import annotations

import base64
import binascii
import gc
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import litserve as ls
import torch
from starlette.datastructures import FormData, UploadFile
from starlette.responses import JSONResponse, Response

from mnist_lightning.data.digits import InMemoryDigits
from mnist_lightning.data.idx import DATASETS
from mnist_lightning.data.images import UnusableImage, decode_image, digit_tensor, to_mnist
from mnist_lightning.errors import first_line
from mnist_lightning.export import input_normalisation, load_model
from mnist_lightning.serve.settings import PREDICT_PATH

log = logging.getLogger(__name__)
FIELD = "image"  # the multipart field of one image file
MAX_IMAGES = 256  # images in one JSON request; more is refused (split them over several requests)
USAGE = (f"send one image file as the multipart field '{FIELD}' (curl -F {FIELD}=@digit.png URL) "
         'or JSON {"images": [base64, ...]}')


class Rejected(Exception):
    """A request that cannot be predicted: its HTTP status and the one-line reason, answered to it alone."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Digits:
    """One request's images as the net is given them, and how the answer is shaped."""

    images: torch.Tensor  # uint8 (N, 28, 28): `to_mnist`'s digits, deskewed when the run was
    single: bool  # one multipart file: answer one object, not {"predictions": [...]}
    return_image: bool  # add each 28x28 image to its answer


def class_names(data_hparams: dict[str, Any]) -> tuple[str, ...]:
    """The names of the classes of the dataset the checkpoint was trained on, as `predict` prints them."""
    return DATASETS[data_hparams.get("dataset", "mnist")].classes


def _flag(value: Any, name: str) -> bool:
    """A yes/no request option, from JSON (true/false) or a form field ("true", "1", "false", "0")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0"):
        return value.lower() in ("true", "1")
    raise Rejected(400, f"'{name}' must be true or false, got {str(value)[:40]!r}")


def _base64_image(text: Any, index: int) -> bytes:
    """The bytes of `images[index]`: base64, or a data URL as a browser's `canvas.toDataURL` gives."""
    if not isinstance(text, str):
        raise Rejected(400, f"images[{index}] must be a base64 string, got {type(text).__name__}")
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected(400, f"images[{index}] is not valid base64") from None


def request_images(payload: Any) -> tuple[list[tuple[str, bytes]], bool, bool]:
    """The uploaded files of one request as (name for messages, bytes), whether it was a single multipart
    file, and whether the prepared images were asked for; `Rejected` (400) for a request of the wrong shape."""
    if isinstance(payload, FormData):
        files = payload.getlist(FIELD)
        if len(files) != 1 or not isinstance(files[0], UploadFile):
            found = f"{len(files)} values" if len(files) != 1 else "a text value, not a file"
            raise Rejected(400, f"expected one file in the multipart field '{FIELD}', found {found}: {USAGE}")
        files[0].file.seek(0)
        return [(FIELD, files[0].file.read())], True, _flag(payload.get("return_image", "false"), "return_image")
    if not isinstance(payload, dict) or "images" not in payload:
        raise Rejected(400, f"JSON body without an 'images' list: {USAGE}")
    images = payload["images"]
    if not isinstance(images, list) or not images:
        raise Rejected(400, "'images' must be a non-empty list of base64 strings")
    if len(images) > MAX_IMAGES:
        raise Rejected(
            413, f"{len(images)} images in one request; at most {MAX_IMAGES}: split them over several requests"
        )
    blobs = [(f"images[{i}]", _base64_image(text, i)) for i, text in enumerate(images)]
    return blobs, False, _flag(payload.get("return_image", False), "return_image")


class DigitAPI(ls.LitAPI):
    """A checkpoint's net behind LitServe: image files in, label, class name and probabilities out.

    Args:
        ckpt_path: a checkpoint written by `fit`; its net, input settings and class names are read from it.
        max_batch_size, batch_timeout: LitServe's batching (requests gathered per `predict`, seconds to wait).
        torch_threads: torch's threads in the inference worker. One serves a small net fastest: more threads spin
            against the HTTP server for the same cores (docs/serving.md, "Speed").
    """

    def __init__(self, ckpt_path: str, max_batch_size: int = 1, batch_timeout: float = 0.0, torch_threads: int = 1):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=PREDICT_PATH)
        self.ckpt_path = ckpt_path
        self.torch_threads = torch_threads

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.torch_threads)
        model, data_hparams = load_model(self.ckpt_path)
        self.model = model.eval().to(device)
        mean, std = input_normalisation(data_hparams) or (None, None)
        self.mean, self.std = mean, std
        self.deskew = bool(data_hparams.get("deskew"))
        self.classes = class_names(data_hparams)
        gc.freeze()  # torch, Lightning and the model live as long as the worker: no seconds of collection at its end

    # `request` is the parsed body (FormData or JSON); LitServe reads its annotation as the endpoint's type.
    def decode_request(self, request) -> Digits | Rejected:
        try:
            files, single, return_image = request_images(request)
            digits = []
            for name, blob in files:
                try:
                    digits.append(torch.from_numpy(to_mnist(decode_image(io.BytesIO(blob)))))
                except UnusableImage as err:
                    raise Rejected(422, str(err) if single else f"{name}: {err}") from None
                except Exception as err:  # a file no check foresaw: refused alone, logged for whoever runs the server
                    log.warning("could not prepare %s of a request", name, exc_info=True)
                    reason = f"cannot prepare this image ({type(err).__name__}: {first_line(err)})"
                    raise Rejected(422, reason if single else f"{name}: {reason}") from None
            return Digits(digit_tensor(digits, self.deskew), single, return_image)
        except Rejected as rejected:
            return rejected

    def predict(self, x: Digits | Rejected | list[Digits | Rejected]) -> Any:
        """One request (no batching) or the list LitServe gathered: the net runs once on all their images."""
        requests = x if isinstance(x, list) else [x]
        accepted = [r for r in requests if isinstance(r, Digits)]
        if accepted:
            images = torch.cat([r.images for r in accepted])
            dataset = InMemoryDigits(images, torch.arange(len(images)), self.mean, self.std)
            batch = [t.to(self.model.device) for t in dataset.__getitems__(range(len(images)))]
            with torch.inference_mode():
                probabilities = self.model.predict_step(batch, 0).float().cpu()
            shares = iter(probabilities.split([len(r.images) for r in accepted]))
        outputs = [r if isinstance(r, Rejected) else (r, next(shares)) for r in requests]
        return outputs if isinstance(x, list) else outputs[0]

    def encode_response(self, output: tuple[Digits, torch.Tensor] | Rejected) -> Response:
        if isinstance(output, Rejected):
            return JSONResponse({"detail": output.detail}, status_code=output.status)
        digits, probabilities = output
        answers = []
        for image, p in zip(digits.images, probabilities, strict=True):
            label = int(p.argmax())
            answer = {"label": label, "class_name": self.classes[label], "probabilities": p.tolist()}
            if digits.return_image:
                answer["image"] = image.tolist()
            answers.append(answer)
        body = answers[0] if digits.single else {"predictions": answers}
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")
