"""Your own digit images, prepared the way MNIST's were, for `predict`.

    python -m mnist_lightning predict --ckpt_path CKPT --data.predict_path my_digit.png
    python -m mnist_lightning predict --ckpt_path CKPT --data.predict_path my_digits/

A net trained on MNIST has only ever seen white, centred, 20-pixel digits on black; a phone photo
or a drawing from a paint program looks nothing like that. `to_mnist` repeats the preparation of
the MNIST digits (LeCun et al.) on any image:

1. Greyscale. EXIF rotation is applied; transparent pixels count as white paper.
2. Invert when the background is light: the background is read from the border pixels (their
   mean above mid-grey means dark ink on light paper), so the digit ends up light on dark.
3. Stretch the contrast: the background level (median of the border) becomes 0 and the strongest
   ink 255. An image with no ink to speak of is refused as blank.
4. Crop to the ink's bounding box (pixels above a quarter of the contrast).
5. Scale the longer side to 20 pixels, keeping the aspect ratio (Lanczos, i.e. anti-aliased, so
   a large image keeps its strokes as grey levels rather than losing them).
6. Paste into a black 28x28 field so that the centre of mass of the ink lands on the field's
   centre (pixel 14, 14), as for MNIST.

The result is a uint8 image scaled exactly like the training data (`x / 255`, then
`(x - mean) / std` when the run normalises). Thin strokes on a huge canvas come out faint; draw with
a thick pen, or crop before predicting.

A folder is read in sorted order, without sub-folders or hidden files. A file that is missing,
not an image, or unreadable is listed in `errors` with the reason and the rest are still predicted;
only when no file at all can be used is that an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_lightning.errors import UserInputError
from mnist_lightning.loaders import InMemoryDigits

FIELD = 28  # MNIST's image side
BOX = 20  # the side of the box the digit is scaled into
MIN_CONTRAST = 32  # grey levels between background and ink below which the image counts as blank
INK_LEVEL = 0.25  # fraction of the contrast above which a pixel counts towards the bounding box


class UnusableImage(ValueError):
    """One file that cannot be predicted; the message says why."""


def read_image(path: Path) -> Image.Image:
    """Decode `path` fully (upright, as EXIF says), with the reason in an `UnusableImage` if it can't be."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            return ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise UnusableImage("file not found") from None
    except UnidentifiedImageError:
        raise UnusableImage("not an image (Pillow cannot identify the format)") from None
    except Image.DecompressionBombError as err:
        raise UnusableImage(f"image too large to decode safely ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:  # Pillow reports broken data with all three
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise UnusableImage(f"unreadable or truncated image ({reason})") from None


def to_mnist(image: Image.Image) -> np.ndarray:
    """An image of any size and mode as an MNIST-style (28, 28) uint8 digit: see the module docstring."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")  # transparent pixels are white paper
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    a = np.asarray(image.convert("L"), dtype=np.float32)
    border = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
    if border.mean() > 127.5:  # light paper: make the ink the light part, as in MNIST
        a, border = 255.0 - a, 255.0 - border
    background, peak = float(np.median(border)), float(a.max())
    if peak - background < MIN_CONTRAST:
        raise UnusableImage(f"blank image: no ink stands out from the background (contrast {peak - background:.0f}/255)")
    ink = np.clip((a - background) / (peak - background), 0.0, 1.0)

    rows, cols = np.nonzero(ink > INK_LEVEL)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = ink.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS), dtype=np.float32).clip(0.0, 1.0)

    # Shift so that the centre of mass sits on pixel (14, 14), as in MNIST; stay inside the field.
    weights = digit.sum()
    centre_row = (digit.sum(axis=1) * np.arange(digit.shape[0])).sum() / weights
    centre_col = (digit.sum(axis=0) * np.arange(digit.shape[1])).sum() / weights
    top = int(np.clip(round(FIELD / 2 - centre_row), 0, FIELD - digit.shape[0]))
    left = int(np.clip(round(FIELD / 2 - centre_col), 0, FIELD - digit.shape[1]))
    field = np.zeros((FIELD, FIELD), dtype=np.float32)
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return np.round(field * 255).astype(np.uint8)


class ImageFolderDigits(InMemoryDigits):
    """Image files prepared like MNIST, for `predict`: items are (image (1, 28, 28), index into `files`).

    Built on `InMemoryDigits`, so the uint8 -> float scaling is the training data's own code. The
    label slot carries the index, so the prediction writer can name each file. Files that cannot be
    used are in `errors` as (path, reason).
    """

    def __init__(self, path: str | Path, mean: float | None = None, std: float | None = None):
        root = Path(path)
        if not root.exists():
            raise UserInputError(f"data.predict_path {root} does not exist: give an image file or a folder of images.")
        if root.is_dir():
            candidates = sorted(p for p in root.iterdir() if not p.name.startswith(".") and not p.is_dir())
            if not candidates:
                raise UserInputError(f"data.predict_path {root} is an empty folder: there are no images to predict.")
        else:
            candidates = [root]
        self.files: list[Path] = []
        self.errors: list[tuple[Path, str]] = []
        digits = []
        for file in candidates:
            try:
                digits.append(torch.from_numpy(to_mnist(read_image(file))))
                self.files.append(file)
            except UnusableImage as err:
                self.errors.append((file, str(err)))
        if not digits:
            reasons = "\n".join(f"  {file}: {reason}" for file, reason in self.errors)
            raise UserInputError(f"no usable image in data.predict_path {root}:\n{reasons}")
        super().__init__(torch.stack(digits), torch.arange(len(digits)), mean, std)
