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
from PIL import Image, ImageOps, UnidentifiedImageError

from . import data
from .errors import InputError, first_line, one_line

INVERT_CHOICES = ("auto", "yes", "no")
DIGIT_BOX = 20  # MNIST scaled each digit's bounding box to fit 20 x 20 pixels ...
CENTRE = 14.0  # ... and put its centre of mass here (row and column; measured: 14.0 +- 0.3 on MNIST)
# Pixels this far above the background (after stretching the ink to 0-255) belong to the digit;
# fainter ones are paper texture or compression noise.
INK_THRESHOLD = 40
MIN_CONTRAST = 24  # darkest-to-lightest difference below this: a blank image, no digit
MAX_IMAGE_PIXELS = 50_000_000  # a digit needs far fewer; refuses decompression bombs before decoding
# A progressive JPEG is decoded once per scan over the whole image: libjpeg sets no limit, and one scan
# repeated 10,000 times in a 7.7 MB file took minutes. Encoders write about 10 (libjpeg's default).
MAX_JPEG_SCANS = 100
# An image file is read whole before decoding: a 50-megapixel RGBA TIFF stored raw is 200 MB.
MAX_IMAGE_FILE_BYTES = 256 << 20
# Digits one `predict` reads from all its inputs together: data.MAX_IMAGES (2,000,000, 1.5 GiB as
# uint8; they are converted to float32 a batch at a time).
MAX_PREDICT_IMAGES = data.MAX_IMAGES
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
    whose border is light, i.e. a dark digit on light paper. All inputs together
    hold at most ``MAX_PREDICT_IMAGES`` digits.
    """
    if invert not in INVERT_CHOICES:
        raise InputError("--invert", f"must be one of {', '.join(INVERT_CHOICES)}. Received: {invert!r}")
    images, names = [], []
    for path in paths:
        digits, digit_names = read_input(path, invert, MAX_PREDICT_IMAGES - len(names))
        images.append(digits)
        names.extend(digit_names)
    if not images:
        raise InputError("inputs", "none given")
    return np.concatenate(images), names


def read_input(path, invert: str = "auto", max_images: int = MAX_PREDICT_IMAGES) -> tuple[np.ndarray, list[str]]:
    """One input file -> ``uint8 (n, 28, 28)`` digits and their names (see ``load_inputs``).

    The kind of file is told from its first bytes (gunzipped as a stream); each reader
    checks the header's claims against the caps before it reads the data.
    """
    with data.Source(path) as source:  # a regular file under data.MAX_FILE_BYTES; gunzips
        path = source.path
        head = source.read(16)
        source.rewind()
        if not head:
            raise InputError(path, "empty file")
        if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
            if max_images < 1:
                _too_many(path, 1, max_images)
            raw = source.read(MAX_IMAGE_FILE_BYTES + 1)
            if len(raw) > MAX_IMAGE_FILE_BYTES:
                raise InputError(path, data.over_cap(f"an image file of more than {MAX_IMAGE_FILE_BYTES:,} bytes",
                                                     MAX_IMAGE_FILE_BYTES, "MAX_IMAGE_FILE_BYTES").replace(
                                                         "data.py", "predict.py"))
            return read_image(path, raw, invert)[None], [str(path)]
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            raise InputError(path, f"not a PNG, JPEG, GIF, BMP, TIFF or WebP image (it starts with {head[:8]!r})")
        if head.startswith(_NPY_MAGIC):
            return _indexed(path, _as_digits(path, data.read_npy(path, source, _digits_header(path, max_images))))
        if head[:2] == b"\0\0":
            return _indexed(path, _as_digits(path, data.read_idx(source, _digits_header(path, max_images, idx=True))))
        if path.suffix.lower() == ".csv" or head[:1].isdigit():
            images, _ = data.read_csv(source, labelled=None)
            if len(images) > max_images:
                _too_many(path, len(images), max_images)
            return images, [f"{path}:{line}" for line in range(1, len(images) + 1)]
    raise InputError(path, f"unknown input format (it starts with {head[:8]!r}); expected a PNG or JPEG "
                           "image, a CSV file, an IDX file or a .npy array")


def _too_many(path, count: int, left: int) -> None:
    claim = f"{count:,} digits" + (f" with {left:,} left for all inputs together" if left < MAX_PREDICT_IMAGES else "")
    raise InputError(path, data.over_cap(claim, MAX_PREDICT_IMAGES, "MAX_IMAGES"))


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
        # Entropy-coded data stuffs every 0xFF byte, so b"\xff\xda" is a start-of-scan marker or, at most, one
        # inside a thumbnail: counted, not parsed.
        scans = raw.count(b"\xff\xda") if image.format in ("JPEG", "MPO") else 0
        if scans > MAX_JPEG_SCANS:
            raise InputError(path, f"a JPEG of {scans:,} scans; more than {MAX_JPEG_SCANS} is refused (a cap of "
                                   "this tool: mnist_multibackend.predict.MAX_JPEG_SCANS)")
        image = ImageOps.exif_transpose(image)  # a phone photo's pixels are stored sideways
        gray = _grayscale(image)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(path, "not a readable image (Pillow recognises no image format in it, or its header is "
                               "damaged)") from None
    except Exception as err:  # noqa: BLE001 - a decoder fed untrusted bytes: any failure means a bad image
        detail = first_line(err, limit=200)
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
        if not np.isfinite(gray).all():  # a floating-point TIFF can hold them: preprocess_image refuses them
            return gray
        if image.mode == "F" and gray.min() >= 0 and gray.max() <= 1:  # 0-1, as an .npy of floats may be
            return gray * 255.0
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
    if not np.isfinite(gray).all():
        raise ValueError("pixels include NaN or infinity")
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

_SHAPES = "expected (28, 28), (n, 28, 28), (n, 28, 28, 1) or (n, 784)"


def _digits_header(path: Path, max_images: int, idx: bool = False):
    """A header check (``shape``, ``dtype``) for arrays of digits, before their data is read."""
    def check(shape, dtype):
        shape = tuple(shape)
        if idx and len(shape) == 1:
            raise InputError(path, f"holds {shape[0]} single values (a label file?), expected images "
                                   "of shape (n, 28, 28)")
        if shape == data.IMAGE_SHAPE:
            count = 1
        elif (len(shape) == 3 and shape[1:] == data.IMAGE_SHAPE) or (len(shape) == 4 and shape[1:] == (28, 28, 1)) \
                or (len(shape) == 2 and shape[1] == data.PIXELS):
            count = shape[0]
        else:
            raise InputError(path, f"array of shape {shape}, {_SHAPES}")
        if count == 0:
            raise InputError(path, f"holds no images (shape {shape})")
        if count > max_images:
            _too_many(path, count, max_images)
    return check


_CONVERT_IMAGES = 65536  # float pixels are checked and converted this many digits at a time (about 400 MB)


def _as_digits(path: Path, array: np.ndarray) -> np.ndarray:
    """Numeric pixels -> ``uint8 (28, 28)`` or ``(n, 28, 28)``.

    Accepted shapes: ``(28, 28)``, ``(n, 28, 28)``, ``(n, 28, 28, 1)``, ``(n, 784)``.
    Integers must lie in 0-255; floats in 0-1 (the model's scaling) or 0-255, and
    finite. Floats are converted a block at a time, so a large array needs little more
    memory than itself and its ``uint8`` result.
    """
    _digits_header(path, float("inf"))(array.shape, array.dtype)
    single = array.shape == data.IMAGE_SHAPE
    array = array.reshape(-1, *data.IMAGE_SHAPE)
    if array.dtype.kind == "f":
        for start in range(0, len(array), _CONVERT_IMAGES):
            if not np.isfinite(array[start:start + _CONVERT_IMAGES]).all():
                raise InputError(path, "pixels include NaN or infinity")
    low, high = array.min(), array.max()
    scale = 255.0 if array.dtype.kind == "f" and low >= 0 and high <= 1 else 1.0
    if np.round(low * scale) < 0 or np.round(high * scale) > 255:
        raise InputError(path, f"pixel values from {low} to {high}, outside 0-255")
    if array.dtype.kind == "f":
        digits = np.empty(array.shape, np.uint8)
        for start in range(0, len(array), _CONVERT_IMAGES):
            block = array[start:start + _CONVERT_IMAGES]
            digits[start:start + len(block)] = np.clip(np.round(block * scale), 0, 255)
    else:
        digits = array.astype(np.uint8, copy=False)
    return digits[0] if single else digits


# --------------------------------------------------------------------------- prediction

def model_shapes(model) -> tuple[list, list]:
    """The shapes of ``model``'s inputs and outputs, batch dimension included (``None``): two lists of tuples."""
    def shapes(tensors):
        return [tuple(tensor.shape) for tensor in tensors]

    try:
        return shapes(model.inputs), shapes(model.outputs)
    except (AttributeError, ValueError):  # a Sequential never built: its file gave no input shape
        return [], []


def describe_shapes(model) -> str:
    """``input (None, 28, 28, 1), output (None, 10)``; several inputs or outputs are listed."""
    def listed(kind, shapes):
        if not shapes:
            return f"{kind} unknown (not built)"
        return f"{kind}{'s' if len(shapes) > 1 else ''} {' and '.join(map(str, shapes))}"

    inputs, outputs = model_shapes(model)
    return f"{listed('input', inputs)}, {listed('output', outputs)}"


def check_classifier(model, subject) -> None:
    """Refuse a model that does not map ``(28, 28, 1)`` images to 10 classes, naming what it maps, or that
    takes anything but floating-point images, or whose weights hold NaN or infinity."""
    from .model import first_non_finite  # imports Keras: a model exists, so the backend is chosen

    inputs, outputs = model_shapes(model)
    if inputs != [(None, 28, 28, 1)] or outputs != [(None, data.NUM_CLASSES)]:
        raise InputError(subject, f"not a digit classifier: its {describe_shapes(model)}; evaluate, predict "
                                  "and report need input (None, 28, 28, 1), output (None, 10)")
    dtype = str(model.inputs[0].dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise InputError(subject, f"not a digit classifier: it takes {dtype[:40]} inputs, not floating-point images")
    weight = first_non_finite(model.weights)
    if weight is not None:
        raise InputError(subject, f"its weight {weight.path} holds NaN or infinite values")


def predict_digits(model, images: np.ndarray, batch_size: int = PREDICT_BATCH_SIZE) -> np.ndarray:
    """``uint8 (n, 28, 28)`` digits -> ``float32 (n, 10)`` class probabilities, in batches.

    The model's forward pass runs compiled, without Keras's predict loop
    (``inference.ForwardPass``). Each batch is converted to float32 on its own: the
    float copy of all the digits, four times their size, is never made.
    """
    from .inference import ForwardPass  # imports Keras: only once a backend is chosen

    # Fewer digits than a batch: one batch of just them, not padded to batch_size.
    forward = ForwardPass(model, max(1, min(batch_size, len(images))))
    return forward.predict(images, prepare=data.as_model_input).astype(np.float32, copy=False)


def format_predictions(names, probabilities: np.ndarray, as_json: bool = False) -> list[str]:
    """One line per digit: ``NAME<tab>DIGIT<tab>PROBABILITY``, or a JSON object with all ten."""
    lines = []
    for name, row in zip(names, probabilities):
        digit = int(np.argmax(row))
        if as_json:
            lines.append(json.dumps({"input": name, "digit": digit, "probability": round(float(row[digit]), 6),
                                     "probabilities": [round(float(p), 6) for p in row]}))
        else:
            lines.append(f"{one_line(name)}\t{digit}\t{row[digit]:.4f}")  # a tab in a name would add a field
    return lines
