"""Your own images prepared like MNIST's digits, for `predict` and `serve` (predict's table is in
`callbacks/predictions.py`).

    python -m mnist_lightning predict --ckpt_path CKPT                       # the test set
    python -m mnist_lightning predict --ckpt_path CKPT --data.predict_path my_digits/ --predictions_csv out.csv

A net trained on MNIST has only ever seen white, centred, 20-pixel digits on black; a phone photo
or a drawing from a paint program looks nothing like that. `to_mnist` repeats the preparation of
the MNIST digits (LeCun et al.) on any image:

1. Greyscale. EXIF rotation is applied; transparent pixels count as white paper. 16-bit and
   float images (scanners, microscopes, TIFFs) are first scaled from their own darkest to their
   brightest value onto 0-255, so 12-bit data in a 16-bit file uses the full range too.
2. Invert when the background is light: the background is read from the border pixels (their
   mean above mid-grey means dark ink on light paper), so the digit ends up light on dark.
3. Stretch the contrast: the background level (median of the border) becomes 0 and the strongest
   ink 255. An image with no ink to speak of is refused as blank.
4. Crop to the ink's bounding box (pixels above a quarter of the contrast).
5. Scale the longer side to 20 pixels, keeping the aspect ratio (Lanczos, i.e. anti-aliased).
6. Paste into a black 28x28 field so that the centre of mass of the ink lands on the field's
   centre (pixel 14, 14), as for MNIST.
7. Deskew (`mnist_lightning.data.deskew`) when the run's data was deskewed (`--data.deskew true`).

Decoding is bounded: an image above `MAX_PIXELS` (40 megapixels) is refused from its header,
before any pixel is decoded; JPEGs are decoded at a reduced scale (`Image.draft`) and every image is
reduced to at most `WORKING_SIDE` pixels a side before the preparation.

A folder is read with its subfolders (recursively, links to folders not followed), sorted by path;
hidden files and folders are skipped, and so is anything that is not a regular file (a named pipe
would block forever). A file that cannot be used is listed with the reason and the rest are still
predicted; only when no file at all can be used is that an error. File names that are not valid
UTF-8 are shown (table, CSV, messages) with their odd bytes as `\\xNN`.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mnist_lightning.data.deskew import deskew as deskew_digits
from mnist_lightning.data.digits import InMemoryDigits
from mnist_lightning.errors import UserInputError

FIELD = 28  # MNIST's image side
BOX = 20  # the side of the box the digit is scaled into
MIN_CONTRAST = 32  # grey levels between background and ink below which the image counts as blank
INK_LEVEL = 0.25  # fraction of the contrast above which a pixel counts towards the bounding box
MAX_PIXELS = 40_000_000  # larger images are refused before decoding (a 13000x13000 PNG took 3 GB)
WORKING_SIDE = 2048  # images are reduced to at most this many pixels a side before the preparation
WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")  # more than 8 bits per pixel


class UnusableImage(ValueError):
    """One file that cannot be predicted; the message says why."""


def display_name(path: str | os.PathLike[str]) -> str:
    """`path` as printable UTF-8 text: bytes that are not UTF-8 become `\\xNN` (the same in table, CSV and messages)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def console_name(path: str | os.PathLike[str]) -> str:
    """`display_name` for the console: a character that is not printable (a newline, a tab, a terminal escape) is
    written as Python writes it in a string, e.g. `\\n`, so a name never splits a line or recolours the
    terminal. (The CSV keeps the true name; the csv module quotes it.)"""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in display_name(path))


def _regular_file(path: Path) -> None:
    """Refuse what is not a regular file (after links) before opening it: a FIFO would block forever."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UnusableImage("file not found") from None
    except PermissionError:
        raise UnusableImage("permission denied: fix its permissions to predict it") from None
    except OSError as err:
        raise UnusableImage(f"cannot read it ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a folder" if stat.S_ISDIR(mode)
                else "a special file")
        raise UnusableImage(f"not a regular file but {kind}: only image files are read")


def _working_copy(image: Image.Image) -> Image.Image:
    """A mode that `reduce` takes, then at most WORKING_SIDE pixels a side (box-averaged)."""
    if image.mode.startswith("I;16"):
        image = image.convert("I")
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    factor = math.ceil(max(image.size) / WORKING_SIDE)
    return image.reduce(factor) if factor > 1 else image


_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def read_image(path: Path) -> Image.Image:
    """Decode `path` (upright, as EXIF says, reduced to WORKING_SIDE), with the reason in an `UnusableImage` if it
    can't be."""
    path = Path(path)
    _regular_file(path)
    return decode_image(path)


def decode_image(source: Path | BinaryIO) -> Image.Image:
    """Decode an image file or an open binary file (e.g. an upload held in memory) as `read_image` does.

    The one decoder of `predict` and `serve`: the same limits, the same orientation, the same reasons.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS is the (lower) limit here
            with Image.open(source) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise UnusableImage(
                        f"too large: {width}x{height} pixels ({width * height / 1e6:.0f} megapixels) is above the "
                        f"{MAX_PIXELS / 1e6:.0f}-megapixel limit; scale it down first"
                    )
                image.draft(image.mode, (WORKING_SIDE, WORKING_SIDE))  # JPEG: decode at a reduced scale
                image.load()  # decode now: a truncated file fails here, not later
                turn = _TRANSPOSE.get(image.getexif().get(_EXIF_ORIENTATION, 1))
                working = _working_copy(image)  # reduced before turning: no second full-size copy
                return working.transpose(turn) if turn is not None else working
    except UnusableImage:
        raise
    except UnidentifiedImageError:
        raise UnusableImage("not an image (Pillow cannot identify the format)") from None
    except Image.DecompressionBombError as err:
        raise UnusableImage(f"too large to decode safely ({err})") from None
    except PermissionError:
        raise UnusableImage("permission denied: fix its permissions to predict it") from None
    except (OSError, SyntaxError, ValueError) as err:  # Pillow reports broken data with all three
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise UnusableImage(f"unreadable or truncated image ({reason})") from None


def _to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float greyscale image scaled from its own min to its max onto 0-255 ("L").

    Clipping (`convert("L")`) would saturate everything above 255 and call a 16-bit digit blank;
    dividing by 65535 would leave 12-bit data (max 4095) at a sixteenth of the range.
    """
    a = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return Image.new("L", image.size, 0)
    low, high = float(a[finite].min()), float(a[finite].max())
    a = np.where(finite, a, low)
    scaled = (a - low) * (255.0 / (high - low)) if high > low else np.zeros_like(a)
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def to_mnist(image: Image.Image) -> np.ndarray:
    """An image of any size and mode as an MNIST-style (28, 28) uint8 digit: see the module docstring."""
    if image.mode in WIDE_MODES:
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")  # transparent pixels are white paper
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    a = np.asarray(image.convert("L"), dtype=np.float32)
    border = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
    if border.mean() > 127.5:  # light paper: make the ink the light part, as in MNIST
        a, border = 255.0 - a, 255.0 - border
    background, peak = float(np.median(border)), float(a.max())
    if peak - background < MIN_CONTRAST:
        raise UnusableImage(
            f"blank image: no ink stands out from the background (contrast {peak - background:.0f}/255)")
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


def image_files(root: Path) -> tuple[list[Path], int, list[tuple[Path, str]]]:
    """The non-hidden entries under `root`, subfolders included (links to folders not followed), sorted by
    relative path; how many subfolders were read; and the subfolders that could not be read, with why.

    Non-regular files are kept, so that they are reported (by `read_image`) rather than silently left out.
    """
    found: list[Path] = []
    problems: list[tuple[Path, str]] = []
    subfolders = 0

    def unreadable(err: OSError) -> None:
        problems.append((Path(err.filename), f"folder not read ({err.strerror or err})"))

    for folder, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and not os.path.islink(os.path.join(folder, d)))
        subfolders += len(dirnames)
        found += [Path(folder) / name for name in filenames if not name.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(root).parts), subfolders, problems


def digit_tensor(digits: list[torch.Tensor], deskew: bool) -> torch.Tensor:
    """`to_mnist`'s digits as one uint8 tensor (N, 28, 28), deskewed when the run's data was (`--data.deskew true`)."""
    images = torch.stack(digits)
    return deskew_digits(images) if deskew else images


class ImageFolderDigits(InMemoryDigits):
    """Image files prepared like MNIST, for `predict`: items are (image (1, 28, 28), index into `files`).

    `path` is one image or a folder, read with its subfolders (sorted by path; hidden entries and
    non-regular files skipped). Built on `InMemoryDigits`, so the uint8 -> float scaling is the
    training data's own code; `deskew` straightens the digits as the run's data was. The label slot
    carries the index, so the prediction writer can name each file. Files that cannot be used are in
    `errors` as (path, reason); `summary` says what was read.
    """

    def __init__(self, path: str | Path, mean: float | None = None, std: float | None = None, deskew: bool = False):
        root = Path(path)
        if not root.exists() and not root.is_symlink():
            raise UserInputError(f"data.predict_path {console_name(root)} does not exist: give an image file or a "
                                 "folder of images.")
        subfolders, problems = 0, []
        if root.is_dir():
            candidates, subfolders, problems = image_files(root)
            if not candidates and not problems:
                raise UserInputError(f"data.predict_path {console_name(root)} is an empty folder (subfolders "
                                     "included): there are no images to predict.")
        else:
            candidates = [root]
        self.files: list[Path] = []
        self.errors: list[tuple[Path, str]] = list(problems)
        digits = []
        for file in candidates:
            try:
                digits.append(torch.from_numpy(to_mnist(read_image(file))))
                self.files.append(file)
            except UnusableImage as err:
                self.errors.append((file, str(err)))
        below = f" and its {subfolders} subfolder{'s' * (subfolders != 1)}" if subfolders else ""
        where = f" in {console_name(root)}" + below
        self.summary = f"{len(self.files)} of {len(candidates)} file{'s' * (len(candidates) != 1)}{where} usable"
        if not digits:
            reasons = "\n".join(f"  {console_name(file)}: {reason}" for file, reason in self.errors)
            raise UserInputError(f"no usable image in data.predict_path {console_name(root)}:\n{reasons}")
        super().__init__(digit_tensor(digits, deskew), torch.arange(len(digits)), mean, std)
