"""MNIST data formats: IDX files, the original project's CSV, and Keras's ``mnist.npz``.

Everything here is NumPy only (no Keras import, except for the optional Keras
download in ``load_dataset``), and every reader validates what it reads and
reports a problem as one ``InputError`` line that names the file.

Arrays follow the IDX files: images are ``uint8`` of shape ``(n, 28, 28)``,
labels ``uint8`` of shape ``(n,)`` with values 0-9.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import InputError, first_line, require_at_least

IMAGE_SHAPE = (28, 28)
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
NUM_CLASSES = 10

# IDX type codes (third byte of the magic number); multi-byte types are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
# No MNIST-like file comes near this; it stops a gzip bomb from filling memory.
_MAX_DECOMPRESSED = 1 << 31

# The canonical file names, as published and as Keras and torchvision mirror them.
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# The original project wrote these two CSV files.
CSV_NAMES = ("mnist_train.csv", "mnist_test.csv")
ENV_VAR = "MNIST_DATA_DIR"
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"


# --------------------------------------------------------------------------- IDX

def read_file_bytes(path) -> bytes:
    """The bytes of ``path``, gunzipped when they start with the gzip magic number."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror or err}") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    return _gunzip(path, raw)


def _gunzip(path, raw: bytes) -> bytes:
    out = []
    size = 0
    data = raw
    try:
        # A .gz file may hold several members; decode them all, as gzip(1) does.
        while data:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while data:
                chunk = inflater.decompress(data, 1 << 24)
                size += len(chunk)
                if size > _MAX_DECOMPRESSED:
                    raise InputError(path, f"gzip data expands past {_MAX_DECOMPRESSED} bytes")
                out.append(chunk)
                data = inflater.unconsumed_tail
                if inflater.eof:
                    break
            if not inflater.eof:
                raise InputError(path, "truncated gzip data (the stream ends early)")
            data = inflater.unused_data
    except zlib.error as err:
        raise InputError(path, f"corrupt gzip data ({err})") from None
    return b"".join(out)


def read_idx(path) -> np.ndarray:
    """Read an IDX file (raw or gzip) into an array in native byte order.

    The header is validated: two zero bytes, a known type code, a non-zero
    number of dimensions, and a data size that matches the dimensions exactly.
    """
    raw = read_file_bytes(path)
    if len(raw) == 0:
        raise InputError(path, "empty file")
    if len(raw) < 4:
        raise InputError(path, f"too short for an IDX header ({len(raw)} bytes)")
    code, ndim = raw[2], raw[3]
    if raw[:2] != b"\0\0" or code not in _IDX_DTYPES or ndim == 0:
        raise InputError(path, f"not an IDX file: magic number 0x{raw[:4].hex()} "
                               "(MNIST images have 0x00000803, labels 0x00000801)")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise InputError(path, f"truncated IDX header: {ndim} dimensions need {header_size} bytes, "
                               f"the file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_size
    if actual != expected:
        raise InputError(path, f"IDX header says shape {tuple(dims)} ({expected} data bytes) "
                               f"but the file holds {actual} data bytes")
    array = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path, array) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``)."""
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype)
    if code is None:
        raise ValueError(f"IDX has no type for dtype {array.dtype}. Received: dtype={array.dtype}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions. Received: shape={array.shape}")
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    payload = header + array.astype(_IDX_DTYPES[code]).tobytes()
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def read_idx_pair(images_path, labels_path) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check an MNIST-shaped image file and its label file."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise InputError(images_path, f"expected uint8 images of shape (n, 28, 28), "
                                      f"found {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise InputError(labels_path, f"expected uint8 labels of shape (n,), found {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise InputError(labels_path, f"{len(labels)} labels for {len(images)} images in {images_path}")
    _check_labels(labels_path, labels)
    return images, labels


def _check_labels(path, labels: np.ndarray, first_line: int | None = None) -> None:
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        where = f"line {first_line + bad[0]}" if first_line is not None else f"record {bad[0]}"
        raise InputError(path, f"{where}: label {int(labels[bad[0]])} is outside 0-9")


# --------------------------------------------------------------------------- CSV
# The original project's CSV: no header, one image a line, the label and then
# the 784 pixels (0-255, row-major), separated by commas.

def _cell_tables():
    """Each byte value's CSV cell: 3 right-aligned ASCII digits and a comma, and which of the 4 bytes to keep."""
    values = np.arange(256)
    digits = np.stack([values // 100, values // 10 % 10, values % 10], axis=1) + ord("0")
    width = 1 + (values >= 10) + (values >= 100)
    cells = np.concatenate([digits, np.full((256, 1), ord(","))], axis=1).astype(np.uint8)
    keep = np.concatenate([np.arange(3)[None, :] >= (3 - width)[:, None], np.ones((256, 1), bool)], axis=1)
    return cells, keep


_CELLS, _KEEP = _cell_tables()
_CSV_CHUNK_ROWS = 4096


def format_csv_rows(table: np.ndarray) -> bytes:
    """Format a ``uint8`` table ``(rows, cols)`` as comma-separated decimal lines.

    Vectorised: each value is looked up as a fixed 4-byte cell and a mask drops
    the unused leading places, so a whole block of rows is formatted by two
    table look-ups and one compress, with no Python loop per value.
    """
    cells = _CELLS[table]
    cells[:, -1, 3] = ord("\n")
    return cells[_KEEP[table]].tobytes()


def write_csv(path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write images and labels in the original CSV format (atomically)."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(f"CSV pixels and labels must be uint8. Received: {images.dtype}, {labels.dtype}")
    if images.ndim < 2 or len(images) != len(labels):
        raise ValueError(f"one label per image is needed. Received: images {images.shape}, labels {labels.shape}")
    flat = images.reshape(len(images), int(np.prod(images.shape[1:])))
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        for start in range(0, len(flat), _CSV_CHUNK_ROWS):
            stop = start + _CSV_CHUNK_ROWS
            table = np.concatenate([labels[start:stop, None], flat[start:stop]], axis=1)
            out.write(format_csv_rows(table))


def idx_to_csv(images_path, labels_path, csv_path) -> int:
    """Convert an IDX image/label pair to the original CSV format; returns the row count."""
    images, labels = read_idx_pair(images_path, labels_path)
    write_csv(csv_path, images, labels)
    return len(images)


_PARSE_CHUNK_LINES = 2048  # a few MB of text: the temporaries stay in cache


def parse_csv_table(path, text: bytes, max_value: int = 255) -> np.ndarray:
    """Parse comma-separated non-negative integers into a ``(rows, cols)`` ``uint8`` table.

    Every line must have the same number of values, each within 0..max_value.
    Vectorised: separators are found with array comparisons and each field is
    read from its last digit backwards, one array operation per digit place,
    over a few thousand lines at a time.
    """
    text = text.replace(b"\r\n", b"\n").rstrip(b"\n")
    if not text.strip():
        raise InputError(path, "empty file")
    buf = np.frombuffer(text + b"\n", np.uint8)
    line_ends = np.flatnonzero(buf == ord("\n"))
    line_starts = np.concatenate([[0], line_ends[:-1] + 1])
    columns = None
    chunks = []
    for first in range(0, len(line_ends), _PARSE_CHUNK_LINES):
        last = min(first + _PARSE_CHUNK_LINES, len(line_ends)) - 1
        chunk = buf[line_starts[first]:line_ends[last] + 1]
        table = _parse_lines(path, chunk, first + 1, max_value)
        if columns is None:
            columns = table.shape[1]
        elif table.shape[1] != columns:
            raise InputError(path, f"line {first + 1} has {table.shape[1]} values, line 1 has {columns}")
        chunks.append(table)
    return np.concatenate(chunks)


def _parse_lines(path, buf: np.ndarray, first_line: int, max_value: int) -> np.ndarray:
    """Parse whole lines (``buf`` ends with a newline); ``first_line`` numbers them in messages."""
    is_newline = buf == ord("\n")
    is_sep = is_newline | (buf == ord(","))

    def line_at(pos) -> int:  # only on the error path
        return first_line + int(np.count_nonzero(is_newline[:pos]))

    bad = np.flatnonzero(~is_sep & ((buf < ord("0")) | (buf > ord("9"))))
    if bad.size:
        ch = bytes(buf[bad[0]:bad[0] + 1])
        raise InputError(path, f"line {line_at(bad[0])}: unexpected character {ch!r} "
                               f"(expected integers 0-{max_value} separated by commas)")
    ends = np.flatnonzero(is_sep)
    lengths = np.diff(ends, prepend=-1) - 1
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise InputError(path, f"line {line_at(ends[empty[0]])}: empty value "
                               "(a blank line, or two commas in a row)")
    per_line = np.diff(np.flatnonzero(is_newline[ends]), prepend=-1)
    if (per_line != per_line[0]).any():
        line = int(np.flatnonzero(per_line != per_line[0])[0])
        raise InputError(path, f"line {first_line + line} has {per_line[line]} values, "
                               f"line {first_line} has {per_line[0]}")
    longest = int(lengths.max())
    if longest > 9:  # more digits than int64 arithmetic below can hold safely
        i = int(np.argmax(lengths))
        raise InputError(path, f"line {line_at(ends[i])}: value "
                               f"{bytes(buf[ends[i] - lengths[i]:ends[i]]).decode()} is outside 0-{max_value}")
    values = buf[ends - 1].astype(np.int64) - ord("0")
    for place in range(1, longest):
        # A field shorter than this place reads a separator or a neighbour's digit; the mask zeroes it.
        values += (buf[ends - 1 - place].astype(np.int64) - ord("0")) * (lengths > place) * 10 ** place
    out_of_range = np.flatnonzero(values > max_value)
    if out_of_range.size:
        i = out_of_range[0]
        raise InputError(path, f"line {line_at(ends[i])}: value {values[i]} is outside 0-{max_value}")
    return values.astype(np.uint8).reshape(len(per_line), int(per_line[0]))


def read_csv(path, labelled: bool | None = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Read the original CSV format: returns ``(images, labels)``.

    With ``labelled=False`` the file has only the 784 pixels per line and
    ``labels`` is ``None``; with ``labelled=None`` the number of values per
    line decides (785: a label first, 784: pixels only).
    """
    table = parse_csv_table(path, read_file_bytes(path))
    if labelled is None and table.shape[1] in (PIXELS, PIXELS + 1):
        labelled = table.shape[1] == PIXELS + 1
    expected = {True: f"{PIXELS + 1} (a label and {PIXELS} pixels)", False: f"{PIXELS} (the pixels)",
                None: f"{PIXELS + 1} (a label and {PIXELS} pixels) or {PIXELS} (the pixels only)"}[labelled]
    if table.shape[1] != PIXELS + (1 if labelled else 0):
        raise InputError(path, f"{table.shape[1]} values per line, expected {expected}")
    if not labelled:
        return table.reshape(-1, *IMAGE_SHAPE), None
    labels = np.ascontiguousarray(table[:, 0])
    _check_labels(path, labels, first_line=1)
    return np.ascontiguousarray(table[:, 1:]).reshape(-1, *IMAGE_SHAPE), labels


# --------------------------------------------------------------------------- data sets

@dataclasses.dataclass(frozen=True)
class Dataset:
    """The four MNIST arrays and where they were read from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    def limit(self, n: int | None) -> "Dataset":
        """The same data with only the first ``n`` training images (all test images)."""
        if n is None:
            return self
        require_at_least("--limit", n)
        return dataclasses.replace(self, x_train=self.x_train[:n], y_train=self.y_train[:n])


def load_npz(path) -> Dataset:
    """Read a Keras ``mnist.npz`` (keys ``x_train``, ``y_train``, ``x_test``, ``y_test``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "is not a file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as err:
        raise InputError(path, f"not an MNIST npz: missing array {err}") from None
    except (ValueError, OSError, EOFError) as err:
        raise InputError(path, f"not a readable .npz file ({err})") from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE or y.shape != (len(x),):
            raise InputError(path, f"{split} arrays have shapes {x.shape} {x.dtype} and {y.shape}, "
                                   "expected (n, 28, 28) uint8 and (n,)")
        arrays[f"y_{split}"] = y.astype(np.uint8)
        _check_labels(path, y)
    return Dataset(**arrays, source=str(path.absolute()))


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (name, name + ".gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def load_folder(folder) -> Dataset:
    """Read a folder holding the four IDX files, the CSV pair, or ``mnist.npz`` (in that order)."""
    folder = Path(folder)
    idx = {key: _find_idx(folder, name) for key, name in IDX_NAMES.items()}
    if all(idx.values()):
        x_train, y_train = read_idx_pair(idx["train_images"], idx["train_labels"])
        x_test, y_test = read_idx_pair(idx["test_images"], idx["test_labels"])
        return Dataset(x_train, y_train, x_test, y_test, source=str(folder.absolute()))
    if all((folder / name).is_file() for name in CSV_NAMES):
        return load_csv_pair(folder / CSV_NAMES[0], folder / CSV_NAMES[1])
    if (folder / "mnist.npz").is_file():
        return load_npz(folder / "mnist.npz")
    missing = [name for key, name in IDX_NAMES.items() if idx[key] is None]
    raise InputError(folder, f"no MNIST data here: expected the IDX files ({', '.join(missing)} "
                             f"missing, .gz optional), or {' and '.join(CSV_NAMES)}, or mnist.npz")


def load_csv_pair(train_csv, test_csv) -> Dataset:
    x_train, y_train = read_csv(train_csv)
    x_test, y_test = read_csv(test_csv)
    return Dataset(x_train, y_train, x_test, y_test, source=f"{Path(train_csv).absolute()},{Path(test_csv).absolute()}")


def load_path(path) -> Dataset:
    """Read MNIST from a folder, an ``.npz`` file, or a ``TRAIN.csv,TEST.csv`` pair."""
    text = str(path)
    if "," in text and text.endswith(".csv"):
        train_csv, test_csv = text.split(",", 1)
        return load_csv_pair(train_csv, test_csv)
    path = Path(path)
    if path.is_dir():
        return load_folder(path)
    if path.suffix == ".npz":
        return load_npz(path)
    if not path.exists():
        raise InputError(path, "no such file or directory")
    raise InputError(path, "expected a folder of IDX files, an .npz file, or TRAIN.csv,TEST.csv")


def keras_cache_file() -> Path:
    """Where ``keras.datasets.mnist.load_data()`` keeps its download."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return home / "datasets" / "mnist.npz"


def load_dataset(path=None, download: bool = True) -> Dataset:
    """Load MNIST from, in order: ``path``, ``$MNIST_DATA_DIR``, Keras's cache, Keras's download.

    The download needs Keras imported with a chosen backend; it is the last
    resort and its failure (no network) becomes one line that says how to
    provide the data instead.
    """
    if path:
        return load_path(path)
    if os.environ.get(ENV_VAR):
        return load_path(os.environ[ENV_VAR])
    cached = keras_cache_file()
    if cached.is_file():
        return load_npz(cached)
    reason = "download disabled"
    if download:
        try:
            import keras

            return load_npz(keras.utils.get_file("mnist.npz", origin=KERAS_ORIGIN))
        except Exception as err:  # noqa: BLE001 - any failure means: tell the user how to provide data
            reason = first_line(err)
    raise InputError("MNIST data", f"none found. Pass --data DIR (a folder of the four IDX files, "
                                   f"{' + '.join(CSV_NAMES)}, or mnist.npz) or set {ENV_VAR}=DIR. "
                                   f"The Keras download failed: {reason}")


def as_model_input(images: np.ndarray) -> np.ndarray:
    """``uint8 (n, 28, 28)`` -> ``float32 (n, 28, 28, 1)`` in [0, 1], as the original scaled them."""
    return (images.astype(np.float32) / 255.0)[..., None]


def one_hot(labels: np.ndarray) -> np.ndarray:
    """``(n,)`` class indices -> ``float32 (n, 10)``, for categorical cross-entropy."""
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]
