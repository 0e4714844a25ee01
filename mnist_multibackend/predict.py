"""Classify digits for other programs: read inputs, prepare them as MNIST digits, predict.

Inputs are image files (PNG, JPEG, ... of any size, any polarity), CSV rows in the
original format (label column optional), IDX files and ``.npy`` arrays. Image files
are prepared the way MNIST's digits were: the digit's bounding box is scaled to fit
20 x 20 pixels (aspect ratio kept) and placed in a 28 x 28 field so that its centre
of mass is at the field's centre. CSV, IDX and ``.npy`` inputs are taken to be MNIST
digits already (28 x 28, light on dark).

Reading and preparing inputs needs NumPy and Pillow only, so the command line checks
every input before it starts a backend; ``predict_digits`` takes a loaded Keras model.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from . import data
from .errors import InputError, first_line

INVERT_CHOICES = ("auto", "yes", "no")
DIGIT_BOX = 20  # MNIST scaled each digit's bounding box to fit 20 x 20 pixels ...
CENTRE = 14.0  # ... and put its centre of mass here (row and column; measured: 14.0 +- 0.3 on MNIST)
# Pixels this far above the background (after stretching the ink to 0-255) belong to the digit;
# fainter ones are paper texture or compression noise.
INK_THRESHOLD = 40
MIN_CONTRAST = 24  # darkest-to-lightest difference below this: a blank image, no digit
MAX_IMAGE_PIXELS = 50_000_000  # a digit needs far fewer; refuses decompression bombs before decoding
PREDICT_BATCH_SIZE = 500

# What each kind of file starts with.
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\0", b"MM\0*")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
_NPY_MAGIC = b"\x93NUMPY"


def load_inputs(paths, invert: str = "auto") -> tuple[np.ndarray, list[str]]:
    """Read every input: ``uint8 (n, 28, 28)`` digits (light on dark) and one name per digit.

    A name is the path for a one-image file, ``PATH:LINE`` for a CSV row (lines
    count from 1) and ``PATH[i]`` for an IDX or ``.npy`` record (from 0).
    ``invert`` (auto, yes, no) applies to image files: ``auto`` inverts an image
    whose border is light, i.e. a dark digit on light paper.
    """
    if invert not in INVERT_CHOICES:
        raise InputError("--invert", f"must be one of {', '.join(INVERT_CHOICES)}. Received: {invert!r}")
    images, names = [], []
    for path in paths:
        digits, digit_names = read_input(path, invert)
        images.append(digits)
        names.extend(digit_names)
    if not images:
        raise InputError("inputs", "none given")
    return np.concatenate(images), names


def read_input(path, invert: str = "auto") -> tuple[np.ndarray, list[str]]:
    """One input file -> ``uint8 (n, 28, 28)`` digits and their names (see ``load_inputs``)."""
    path = Path(path)
    raw = data.read_file_bytes(path)  # names a missing file or a directory; gunzips
    if not raw:
        raise InputError(path, "empty file")
    if raw.startswith(_IMAGE_MAGIC) or (raw[:4] == b"RIFF" and raw[8:12] == b"WEBP"):
        return read_image(path, raw, invert)[None], [str(path)]
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        raise InputError(path, f"not a PNG or JPEG image (it starts with {raw[:8]!r})")
    if raw.startswith(_NPY_MAGIC):
        return _indexed(path, _as_digits(path, _read_npy(path, raw)))
    if raw[:2] == b"\0\0":
        return _indexed(path, _idx_digits(path))
    if path.suffix.lower() == ".csv" or raw[:1].isdigit():
        images, _ = data.read_csv(path, labelled=None)
        return images, [f"{path}:{line}" for line in range(1, len(images) + 1)]
    raise InputError(path, f"unknown input format (it starts with {raw[:8]!r}); expected a PNG or JPEG "
                           "image, a CSV file, an IDX file or a .npy array")


def _indexed(path: Path, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
    if images.ndim == 2:
        return images[None], [str(path)]
    return images, [f"{path}[{i}]" for i in range(len(images))]


# --------------------------------------------------------------------------- image files

def read_image(path, raw: bytes, invert: str = "auto") -> np.ndarray:
    """Decode an image file's bytes and prepare it as an MNIST digit: ``uint8 (28, 28)``."""
    try:
        image = Image.open(io.BytesIO(raw))
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise InputError(path, f"image is {width} x {height} pixels, more than the "
                                   f"{MAX_IMAGE_PIXELS} this reads")
        image = ImageOps.exif_transpose(image)  # a phone photo's pixels are stored sideways
        gray = _grayscale(image)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - a decoder fed untrusted bytes: any failure means a bad image
        detail = first_line(err)
        raise InputError(path, f"not a readable image ({detail})") from None
    try:
        return preprocess_image(gray, invert)
    except ValueError as err:
        raise InputError(path, str(err)) from None


def _grayscale(image: Image.Image) -> np.ndarray:
    """Pixel brightness, ``float32 (height, width)`` in 0-255; transparency laid on a contrasting ground."""
    if image.mode.startswith("I;16"):
        return np.asarray(image, np.float32) / 257.0
    if image.mode in ("I", "F"):
        gray = np.asarray(image, np.float32)
        return gray * (255.0 / gray.max()) if gray.max() > 255 else gray
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        gray = np.asarray(rgba.convert("L"), np.float32)
        alpha = np.asarray(rgba.getchannel("A"), np.float32) / 255.0
        opaque = alpha > 0.5
        # Strokes drawn on a transparent canvas: lay them on white if they are dark, on black if light.
        ground = 255.0 if not opaque.any() or gray[opaque].mean() < 128 else 0.0
        return gray * alpha + ground * (1.0 - alpha)
    return np.asarray(image.convert("L"), np.float32)


def preprocess_image(gray, invert: str = "auto") -> np.ndarray:
    """A grayscale picture of one digit (``(height, width)``, 0-255) -> an MNIST digit ``uint8 (28, 28)``.

    Light on dark, the background at 0 and the ink stretched to 255, the digit's
    bounding box scaled to fit 20 x 20 with its aspect ratio kept, and its centre
    of mass at the centre of the 28 x 28 field. Raises ``ValueError`` when the
    picture holds no digit (it is blank).
    """
    gray = np.asarray(gray, np.float32)
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"expected a 2-D grayscale picture. Received: shape={gray.shape}")
    if invert not in INVERT_CHOICES:
        raise ValueError(f"invert must be one of {', '.join(INVERT_CHOICES)}. Received: {invert!r}")
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if invert == "yes" or (invert == "auto" and np.median(border) > 127.5):
        gray, border = 255.0 - gray, 255.0 - border
    ink = np.clip(gray - np.median(border), 0.0, None)
    if ink.max() < MIN_CONTRAST:
        raise ValueError("no digit found: the image is blank (or the digit is as dark as the background; "
                         "try --invert)")
    ink *= 255.0 / ink.max()
    ink[ink < INK_THRESHOLD] = 0.0
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    box = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = DIGIT_BOX / max(box.shape)
    height, width = (max(1, round(side * scale)) for side in box.shape)
    small = np.asarray(Image.fromarray(box, mode="F").resize((width, height), Image.Resampling.LANCZOS))
    small = np.clip(small, 0.0, None)  # Lanczos rings slightly below zero beside strokes
    small *= 255.0 / small.max()
    weight = small.sum()
    centre_row = (small.sum(axis=1) * np.arange(height)).sum() / weight
    centre_col = (small.sum(axis=0) * np.arange(width)).sum() / weight
    top = int(np.clip(round(CENTRE - centre_row), 0, 28 - height))
    left = int(np.clip(round(CENTRE - centre_col), 0, 28 - width))
    digit = np.zeros(data.IMAGE_SHAPE, np.float32)
    digit[top:top + height, left:left + width] = small
    return np.clip(np.round(digit), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- arrays

def _idx_digits(path: Path) -> np.ndarray:
    array = data.read_idx(path)
    if array.ndim == 1:
        raise InputError(path, f"holds {array.shape[0]} single values (a label file?), expected images "
                               "of shape (n, 28, 28)")
    return _as_digits(path, array)


def _read_npy(path: Path, raw: bytes) -> np.ndarray:
    """A ``.npy`` array, its header checked against the file size before anything is allocated."""
    stream = io.BytesIO(raw)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(stream)
        if version not in readers:
            raise ValueError(f"unsupported format version {version[0]}.{version[1]}")
        shape, fortran_order, dtype = readers[version](stream)
    except Exception as err:  # noqa: BLE001 - NumPy parses an untrusted header: any failure means a bad file
        detail = first_line(err)
        raise InputError(path, f"not a valid .npy file ({detail})") from None
    if dtype.kind not in "biuf":
        raise InputError(path, f"holds {dtype} values, expected numeric pixels (Python objects are never read)")
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    actual = len(raw) - stream.tell()
    if actual != expected:
        raise InputError(path, f".npy header says {dtype} {shape} ({expected} bytes) but the file holds "
                               f"{actual} data bytes")
    array = np.frombuffer(raw, dtype=dtype, offset=stream.tell(), count=int(np.prod(shape, dtype=object)))
    return array.reshape(shape, order="F" if fortran_order else "C")


def _as_digits(path: Path, array: np.ndarray) -> np.ndarray:
    """Numeric pixels -> ``uint8 (28, 28)`` or ``(n, 28, 28)``.

    Accepted shapes: ``(28, 28)``, ``(n, 28, 28)``, ``(n, 28, 28, 1)``, ``(n, 784)``.
    Integers must lie in 0-255; floats in 0-1 (the model's scaling) or 0-255.
    """
    shape = array.shape
    if array.ndim >= 3 and shape[-1] == 1:
        array = array[..., 0]
    elif array.ndim == 2 and shape[1] == data.PIXELS:
        array = array.reshape(-1, *data.IMAGE_SHAPE)
    if array.ndim not in (2, 3) or array.shape[-2:] != data.IMAGE_SHAPE:
        raise InputError(path, f"array of shape {shape}, expected (28, 28), (n, 28, 28), (n, 28, 28, 1) "
                               "or (n, 784)")
    if array.ndim == 3 and len(array) == 0:
        raise InputError(path, "holds no images (shape (0, 28, 28))")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise InputError(path, "pixels include NaN or infinity")
        if array.min() >= 0 and array.max() <= 1:
            array = array * 255.0
        array = np.round(array)
    low, high = array.min(), array.max()
    if low < 0 or high > 255:
        raise InputError(path, f"pixel values from {low} to {high}, outside 0-255")
    return array.astype(np.uint8)


# --------------------------------------------------------------------------- prediction

def check_classifier(model, subject) -> None:
    """Refuse a model that does not map ``(28, 28, 1)`` images to 10 classes."""
    inputs, outputs = tuple(model.input_shape[1:]), tuple(model.output_shape[1:])
    if inputs != (28, 28, 1) or outputs != (data.NUM_CLASSES,):
        raise InputError(subject, f"not a digit classifier: it maps {inputs} to {outputs}, "
                                  "expected (28, 28, 1) to (10,)")


def predict_digits(model, images: np.ndarray, batch_size: int = PREDICT_BATCH_SIZE) -> np.ndarray:
    """``uint8 (n, 28, 28)`` digits -> ``float32 (n, 10)`` class probabilities, in batches."""
    return np.asarray(model.predict(data.as_model_input(images), batch_size=batch_size, verbose=0))


def format_predictions(names, probabilities: np.ndarray, as_json: bool = False) -> list[str]:
    """One line per digit: ``NAME<tab>DIGIT<tab>PROBABILITY``, or a JSON object with all ten."""
    lines = []
    for name, row in zip(names, probabilities):
        digit = int(np.argmax(row))
        if as_json:
            lines.append(json.dumps({"input": name, "digit": digit, "probability": round(float(row[digit]), 6),
                                     "probabilities": [round(float(p), 6) for p in row]}))
        else:
            lines.append(f"{name}\t{digit}\t{row[digit]:.4f}")
    return lines
