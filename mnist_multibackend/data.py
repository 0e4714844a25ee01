"""MNIST data formats: IDX files, the original project's CSV, and Keras's ``mnist.npz``.

Everything here is NumPy only (no Keras import, except for the optional Keras
download in ``load_dataset``), and every reader validates what it reads and
reports a problem as one ``InputError`` line that names the file.

Arrays follow the IDX files: images are ``uint8`` of shape ``(n, 28, 28)``,
labels ``uint8`` of shape ``(n,)`` with values 0-9.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import math
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import InputError, first_line, not_regular, require_at_least

IMAGE_SHAPE = (28, 28)
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
NUM_CLASSES = 10

# --------------------------------------------------------------------------- budgets
# Files come from strangers: every reader checks what a file claims against these caps
# before it allocates or reads the data, and refuses in one line that names the cap.
# Each is many times what real data needs and far below what would exhaust a 24 GiB machine.

# Images in one file (or one split of an .npz, or all inputs of one `predict`). MNIST has
# 60,000 training images, EMNIST ByClass 814,255; 2,000,000 is 1.5 GiB as uint8, and
# training's float32 copy of them 5.8 GiB.
MAX_IMAGES = 2_000_000
# Bytes of any one array a file declares (IDX data, an .npy or .npz member): MAX_IMAGES
# uint8 digits. MNIST's training images are 47 MB; a float64 .npy holds 250,000 digits.
MAX_ARRAY_BYTES = MAX_IMAGES * PIXELS
# Size of any input file on disk, and of its gunzipped bytes. The largest valid input at the
# caps is a CSV of MAX_IMAGES rows of MAX_CSV_LINE_BYTES (MNIST's training CSV is 110 MB).
MAX_CSV_LINE_BYTES = 4096  # a valid row is at most 3,141 bytes: 785 values of 3 digits, commas, CRLF
MAX_FILE_BYTES = MAX_IMAGES * MAX_CSV_LINE_BYTES
# Gzip data may expand at most this many times its compressed size (past the first
# GZIP_FREE_BYTES). Real data sets compress 2-8 fold (MNIST's training images 4.7 fold);
# a gzip bomb of blank images expands 1000 fold: 1 MB would be a million digits to predict.
MAX_GZIP_RATIO = 200
GZIP_FREE_BYTES = 64 << 20
# IDX dimensions: MNIST images have 3, labels 1; 4 holds (n, 28, 28, 1).
MAX_IDX_DIMS = 4
# CSV text is parsed this many bytes at a time: the parser's temporaries (about 25 bytes
# per input byte) stay near 100 MB whatever the file's size.
CSV_CHUNK_BYTES = 1 << 22
_WHERE = "mnist_multibackend/data.py"

# IDX type codes (third byte of the magic number); multi-byte types are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}

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


def over_cap(claim: str, cap: int, name: str) -> str:
    """The one wording of a refusal for size: what the file claims, the cap, and where to raise it."""
    return f"{claim}, more than the cap of {cap:,} ({name} in {_WHERE}; raise it there to read more)"


# --------------------------------------------------------------------------- reading files

class Source:
    """An input file's bytes as a stream: a regular file under a size cap, gunzipped as it is read.

    Nothing is read at opening but the first two bytes (is it gzip?). Reads are bounded:
    ``read(n)`` returns at most ``n`` bytes, and the gunzipped stream may not yield more
    than ``max_bytes`` in all, so a gzip bomb costs what the reader asks for and no more.
    Every failure (a truncated or corrupt gzip stream, an I/O error) is an ``InputError``.
    """

    def __init__(self, path, max_bytes: int = MAX_FILE_BYTES):
        self.path = Path(path)
        self.max_bytes = max_bytes
        try:
            info = os.stat(self.path)  # before opening: opening a FIFO would wait for a writer
        except FileNotFoundError:
            raise InputError(self.path, "no such file") from None
        except OSError as err:
            raise InputError(self.path, f"cannot read: {err.strerror or err}") from None
        if stat.S_ISDIR(info.st_mode):
            raise InputError(self.path, "is a directory, expected a file")
        if not stat.S_ISREG(info.st_mode):
            raise InputError(self.path, not_regular(info.st_mode))
        self._check_size(info.st_size)
        try:
            # O_NONBLOCK: should the path have become a FIFO since os.stat, opening it still returns.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as err:
            raise InputError(self.path, f"cannot read: {err.strerror or err}") from None
        self._file = os.fdopen(fd, "rb")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            self._file.close()
            raise InputError(self.path, not_regular(info.st_mode))
        self._check_size(info.st_size)
        os.set_blocking(fd, True)
        self.disk_size = info.st_size
        with self._errors():
            self.gzip = self._file.read(2) == b"\x1f\x8b"
            self._file.seek(0)
        self._stream = gzip.GzipFile(fileobj=self._file, mode="rb") if self.gzip else self._file
        self.size = None if self.gzip else info.st_size  # the bytes this yields, when known without reading
        self.position = 0

    def _check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise InputError(self.path, over_cap(f"{size:,} bytes", self.max_bytes, "MAX_FILE_BYTES"))

    @contextlib.contextmanager
    def _errors(self):
        try:
            yield
        except EOFError:
            raise InputError(self.path, "truncated gzip data (the stream ends early)") from None
        except (zlib.error, gzip.BadGzipFile) as err:
            raise InputError(self.path, f"corrupt gzip data ({first_line(err)})") from None
        except OSError as err:
            raise InputError(self.path, f"cannot read: {err.strerror or err}") from None

    def _count(self, n: int) -> None:
        self.position += n
        if self.position > self.max_bytes:
            raise InputError(self.path, over_cap(f"gzip data expanding past {self.max_bytes:,} bytes",
                                                 self.max_bytes, "MAX_FILE_BYTES"))
        if self.gzip and self.position > max(GZIP_FREE_BYTES, MAX_GZIP_RATIO * self.disk_size):
            raise InputError(self.path, over_cap(f"gzip data expanding more than {MAX_GZIP_RATIO}-fold "
                                                 f"({self.disk_size:,} bytes to over {self.position - n:,})",
                                                 MAX_GZIP_RATIO, "MAX_GZIP_RATIO"))

    def read(self, n: int) -> bytes:
        """At most ``n`` bytes; fewer only at the end of the data."""
        buffer = bytearray(min(n, self._PIECE))
        parts = []
        while n > 0:
            got = self.readinto(memoryview(buffer)[:min(n, self._PIECE)])
            parts.append(bytes(buffer[:got]))
            n -= got
            if got < min(n + got, self._PIECE):
                break
        return b"".join(parts)

    _PIECE = 1 << 24  # bytes decompressed between two checks of the budget

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` (bytes-like); returns how many bytes were there to fill it with."""
        view = memoryview(buffer).cast("B")
        got = 0
        while got < len(view):
            with self._errors():
                n = self._stream.readinto(view[got:got + self._PIECE])
            if not n:
                break
            got += n
            self._count(n)
        return got

    def at_end(self) -> bool:
        """Whether the data is all read (gzip: its last check sum verified too)."""
        return not self.read(1)

    def rewind(self) -> None:
        with self._errors():
            self._stream.seek(0)
        self.position = 0

    def close(self) -> None:
        if self.gzip:
            self._stream.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def _opened(path_or_source):
    """An open ``Source``: the one given, or ``path`` opened (and closed afterwards)."""
    if isinstance(path_or_source, Source):
        yield path_or_source
    else:
        with Source(path_or_source) as source:
            yield source


def read_file_bytes(path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path``, gunzipped when they start with the gzip magic number (at most ``max_bytes``)."""
    with Source(path, max_bytes) as source:
        return source.read(max_bytes + 1)  # one byte more than the cap is refused by Source


def array_span(shape, dtype) -> int:
    """Bytes an array of ``shape`` needs, each zero dimension taken as one: a header of shape
    ``(0, 2**32, 2**32)`` holds nothing, but is no more believable (NumPy cannot even make it)."""
    return math.prod(max(side, 1) for side in shape) * np.dtype(dtype).itemsize


def read_array_data(source, array: np.ndarray, what: str) -> np.ndarray:
    """Fill ``array`` (contiguous) from ``source``, which must hold exactly its bytes and no more.

    ``what`` describes the header's claim, for the refusal.
    """
    got = source.readinto(array.view(np.uint8).reshape(-1)) if array.size else 0
    if got < array.nbytes:
        raise InputError(source.path, f"{what} ({array.nbytes} data bytes) but the file holds {got} data bytes")
    if not source.at_end():
        raise InputError(source.path, f"{what} ({array.nbytes} data bytes) but the file holds more data")
    return array


# --------------------------------------------------------------------------- IDX

def read_idx(path, check=None) -> np.ndarray:
    """Read an IDX file (raw or gzip) into an array in native byte order.

    The header is validated from the first bytes, before any data is read: two zero
    bytes, a known type code, 1 to ``MAX_IDX_DIMS`` dimensions, a data size (computed
    with Python integers, so it never wraps) under ``MAX_ARRAY_BYTES`` that matches
    the file. ``check(shape, dtype)``, when given, may refuse the header too (by
    raising ``InputError``). The data is then read into an array of exactly the
    declared size; more or less data is refused.
    """
    with _opened(path) as source:
        path = source.path
        head = source.read(4)
        if len(head) == 0:
            raise InputError(path, "empty file")
        if len(head) < 4:
            raise InputError(path, f"too short for an IDX header ({len(head)} bytes)")
        code, ndim = head[2], head[3]
        if head[:2] != b"\0\0" or code not in _IDX_DTYPES or ndim == 0:
            raise InputError(path, f"not an IDX file: magic number 0x{head.hex()} "
                                   "(MNIST images have 0x00000803, labels 0x00000801)")
        if ndim > MAX_IDX_DIMS:
            raise InputError(path, f"IDX header declares {ndim} dimensions; MNIST images have 3, labels 1, "
                                   f"and at most {MAX_IDX_DIMS} are read (MAX_IDX_DIMS in {_WHERE})")
        header_size = 4 + 4 * ndim
        packed = source.read(4 * ndim)
        if len(packed) < 4 * ndim:
            raise InputError(path, f"truncated IDX header: {ndim} dimensions need {header_size} bytes, "
                                   f"the file has {4 + len(packed)}")
        dims = struct.unpack(f">{ndim}I", packed)  # Python integers: their product cannot wrap
        dtype = np.dtype(_IDX_DTYPES[code])
        if check is not None:
            check(dims, dtype.newbyteorder("="))
        expected = math.prod(dims) * dtype.itemsize
        if array_span(dims, dtype) > MAX_ARRAY_BYTES:
            raise InputError(path, over_cap(f"IDX header says shape {dims}, {array_span(dims, dtype):,} data bytes",
                                            MAX_ARRAY_BYTES, "MAX_ARRAY_BYTES"))
        said = f"IDX header says shape {dims}"
        if source.size is not None and source.size - header_size != expected:
            raise InputError(path, f"{said} ({expected} data bytes) but the file holds "
                                   f"{source.size - header_size} data bytes")
        array = read_array_data(source, np.empty(math.prod(dims), dtype), said)
    return array.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


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
    """Read and cross-check an MNIST-shaped image file and its label file (headers first, then data)."""
    def images_header(dims, dtype):
        if dtype != np.uint8 or len(dims) != 3 or dims[1:] != IMAGE_SHAPE:
            raise InputError(images_path, f"expected uint8 images of shape (n, 28, 28), found {dtype} {dims}")
        if dims[0] > MAX_IMAGES:
            raise InputError(images_path, over_cap(f"{dims[0]:,} images", MAX_IMAGES, "MAX_IMAGES"))

    def labels_header(dims, dtype):
        if dtype != np.uint8 or len(dims) != 1:
            raise InputError(labels_path, f"expected uint8 labels of shape (n,), found {dtype} {dims}")
        if dims[0] != len(images):
            raise InputError(labels_path, f"{dims[0]} labels for {len(images)} images in {images_path}")

    images = read_idx(images_path, images_header)
    labels = read_idx(labels_path, labels_header)
    _check_labels(labels_path, labels)
    return images, labels


def check_count(path, count: int, what: str) -> None:
    """Refuse a data set's file that holds no images (training and evaluation need some), or more than the cap."""
    if count == 0:
        raise InputError(path, f"holds no {what}: a data set needs at least one training and one test image")
    if count > MAX_IMAGES:
        raise InputError(path, over_cap(f"{count:,} {what}", MAX_IMAGES, "MAX_IMAGES"))


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


def parse_csv_table(path, text: bytes, max_value: int = 255) -> np.ndarray:
    """Parse comma-separated non-negative integers into a ``(rows, cols)`` ``uint8`` table.

    Every line must have the same number of values, each within 0..max_value.
    """
    return read_csv_table(path, io.BytesIO(text), max_value=max_value)


def read_csv_table(path, stream, check_columns=None, max_value: int = 255, max_rows: int | None = None) -> np.ndarray:
    """Parse a stream of CSV text (see ``parse_csv_table``), ``CSV_CHUNK_BYTES`` at a time.

    The text is cut into chunks by bytes, each at its last line end, so memory is the
    table plus one chunk's temporaries whatever the lines: a line longer than
    ``MAX_CSV_LINE_BYTES`` or a table of more than ``max_rows`` rows is refused as soon
    as it is seen, and so is a width that ``check_columns(width)`` refuses (it raises).
    Blank lines at the end are ignored, elsewhere they are an error.
    """
    max_rows = MAX_IMAGES if max_rows is None else max_rows
    tables, rows, columns = [], 0, None
    line = 1  # the number of the next line to parse
    carry = b""  # text after the last complete line
    while True:
        block = stream.read(CSV_CHUNK_BYTES)
        text = (carry + block).replace(b"\r\n", b"\n")
        if block:
            end = text.rfind(b"\n")
            while end > 0 and text[end - 1] == 0x0A:  # keep a run of blank lines for the next chunk: they
                end -= 1  # are an error unless the file ends with them
            if end <= 0:
                end = -1
        else:
            text = text.rstrip(b"\n")
            if not text.strip() and not tables:
                raise InputError(path, "empty file")
            text += b"\n" if text else b""
            end = len(text) - 1
        body, carry = text[:end + 1], text[end + 1:]
        if body:
            buf = np.frombuffer(body, np.uint8)
            ends = np.flatnonzero(buf == ord("\n"))
            lengths = np.diff(ends, prepend=-1) - 1
            if lengths.max() > MAX_CSV_LINE_BYTES:
                i = int(np.argmax(lengths > MAX_CSV_LINE_BYTES))
                raise InputError(path, over_cap(f"line {line + i} is {lengths[i]:,} bytes long",
                                                MAX_CSV_LINE_BYTES, "MAX_CSV_LINE_BYTES"))
            table = _parse_lines(path, buf, line, max_value)
            if columns is None:
                columns = table.shape[1]
                if check_columns is not None:
                    check_columns(columns)
            elif table.shape[1] != columns:
                raise InputError(path, f"line {line} has {table.shape[1]} values, line 1 has {columns}")
            rows += len(table)
            if rows > max_rows:
                raise InputError(path, over_cap(f"more than {max_rows:,} rows", max_rows, "MAX_IMAGES"))
            tables.append(table)
            line += len(ends)
        if len(carry) > MAX_CSV_LINE_BYTES:
            if carry.startswith(b"\n"):
                raise InputError(path, f"line {line}: empty value (a blank line, or two commas in a row)")
            raise InputError(path, over_cap(f"line {line} is longer than {MAX_CSV_LINE_BYTES:,} bytes",
                                            MAX_CSV_LINE_BYTES, "MAX_CSV_LINE_BYTES"))
        if not block:
            return np.concatenate(tables)


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
    line decides (785: a label first, 784: pixels only). The width is checked
    on the first lines, before the rest is read.
    """
    expected = {True: f"{PIXELS + 1} (a label and {PIXELS} pixels)", False: f"{PIXELS} (the pixels)",
                None: f"{PIXELS + 1} (a label and {PIXELS} pixels) or {PIXELS} (the pixels only)"}[labelled]
    widths = {True: (PIXELS + 1,), False: (PIXELS,), None: (PIXELS, PIXELS + 1)}[labelled]

    with _opened(path) as source:
        path = source.path

        def check_columns(width):
            if width not in widths:
                raise InputError(path, f"{width} values per line, expected {expected}")

        table = read_csv_table(path, source, check_columns)
    if table.shape[1] == PIXELS:
        return table.reshape(-1, *IMAGE_SHAPE), None
    labels = np.ascontiguousarray(table[:, 0])
    _check_labels(path, labels, first_line=1)
    images = np.ascontiguousarray(table[:, 1:]).reshape(-1, *IMAGE_SHAPE)
    return images, labels


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


# ``.npy`` headers longer than NumPy's own limit for untrusted files are not parsed.
MAX_NPY_HEADER_BYTES = 10_000
# An .npz's central directory (np.savez writes about 100 bytes per array; 1 MiB is 10,000
# arrays): zipfile reads it whole and makes an object per entry before anything else.
MAX_ZIP_DIRECTORY_BYTES = 1 << 20
_NPY_LENGTH_BYTES = {(1, 0): 2, (2, 0): 4}


def read_npy(path, stream, check=None) -> np.ndarray:
    """A ``.npy`` array from ``stream``, its header checked before any data is read.

    The header's length is checked before it is read, then parsed by NumPy's reader;
    only numeric dtypes are taken (a pickle of Python objects is never read), the size
    must be under ``MAX_ARRAY_BYTES``, ``check(shape, dtype)`` may refuse the header too,
    and the data must be exactly the declared size.
    """
    shape, fortran_order, dtype = read_npy_header(path, stream)
    if check is not None:
        check(shape, dtype)
    said = f".npy header says {dtype} {shape}"
    if array_span(shape, dtype) > MAX_ARRAY_BYTES:
        raise InputError(path, over_cap(f"{said}, {array_span(shape, dtype):,} data bytes", MAX_ARRAY_BYTES,
                                        "MAX_ARRAY_BYTES"))
    array = read_array_data(_Stream(path, stream), np.empty(math.prod(shape), dtype), said)
    return array.reshape(shape, order="F" if fortran_order else "C")


def read_npy_header(path, stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The header of the ``.npy`` array that ``stream`` starts with: ``(shape, fortran_order, dtype)``, a
    numeric dtype and sizes that are whole numbers; the stream is left at the array's data."""
    prefix = stream.read(8)
    if len(prefix) < 8 or not prefix.startswith(b"\x93NUMPY"):
        raise InputError(path, "not a valid .npy file (no .npy magic string)")
    version = (prefix[6], prefix[7])
    if version not in _NPY_LENGTH_BYTES:
        raise InputError(path, f"not a valid .npy file (unsupported format version {version[0]}.{version[1]})")
    length = stream.read(_NPY_LENGTH_BYTES[version])
    header_size = int.from_bytes(length, "little")
    if len(length) < _NPY_LENGTH_BYTES[version]:
        raise InputError(path, "not a valid .npy file (truncated header)")
    if header_size > MAX_NPY_HEADER_BYTES:
        raise InputError(path, over_cap(f".npy header of {header_size:,} bytes", MAX_NPY_HEADER_BYTES,
                                        "MAX_NPY_HEADER_BYTES"))
    header = stream.read(header_size)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        shape, fortran_order, dtype = readers[version](io.BytesIO(length + header))
    except Exception as err:  # noqa: BLE001 - NumPy parses an untrusted header: any failure means a bad file
        raise InputError(path, f"not a valid .npy file ({first_line(err, limit=200)})") from None
    # NumPy's parser takes any Python int as a size, a negative one or a bool too
    if any(type(side) is not int or side < 0 for side in shape):
        raise InputError(path, f"not a valid .npy file (its header's shape {str(shape)[:100]} is not a list of sizes)")
    if dtype.hasobject or dtype.kind not in "biuf":
        raise InputError(path, f"holds {dtype} values, expected numbers (Python objects are never read)")
    return shape, fortran_order, dtype


class _Stream:
    """``read_array_data``'s view of a plain stream (a ``Source`` is used as it is)."""

    def __init__(self, path, stream):
        self.path, self.stream = Path(path), stream

    def readinto(self, buffer) -> int:
        if isinstance(self.stream, Source):
            return self.stream.readinto(buffer)
        view, got = memoryview(buffer).cast("B"), 0
        while got < len(view):
            n = self.stream.readinto(view[got:])
            if not n:
                break
            got += n
        return got

    def at_end(self) -> bool:
        return not self.stream.read(1)


def zip_directory_bytes(file, size: int) -> int | None:
    """The size of the central directory of the zip archive ``file`` (``size`` bytes long), read from its end
    records as ``zipfile`` finds them (at the end, else within the comment's 64 KiB, then the Zip64 record just
    before); None where there is no end record. ``file`` is left at its start."""
    tail_size = min(size, 22 + 0xFFFF)
    file.seek(size - tail_size)
    tail = file.read(tail_size)
    at = len(tail) - 22 if tail[-22:-18] == b"PK\x05\x06" else tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        file.seek(0)
        return None
    directory = struct.unpack("<4s4H2LH", tail[at:at + 22])[5]
    end_record = size - tail_size + at
    if end_record >= 76:
        file.seek(end_record - 76)
        zip64 = file.read(76)
        if zip64[56:60] == b"PK\x06\x07" and zip64[:4] == b"PK\x06\x06":
            directory = struct.unpack("<4sQ2H2L4Q", zip64[:56])[8]
    file.seek(0)
    return directory


def _check_zip_directory(path, file, size: int) -> None:
    """Refuse a zip whose central directory is larger than ``MAX_ZIP_DIRECTORY_BYTES``, before zipfile reads it."""
    directory = zip_directory_bytes(file, size)
    if directory is None:
        raise InputError(path, "not a readable .npz file (no zip directory at its end)")
    if directory > MAX_ZIP_DIRECTORY_BYTES:
        raise InputError(path, over_cap(f"a zip directory of {directory:,} bytes", MAX_ZIP_DIRECTORY_BYTES,
                                        "MAX_ZIP_DIRECTORY_BYTES"))


def load_npz(path) -> Dataset:
    """Read a Keras ``mnist.npz`` (keys ``x_train``, ``y_train``, ``x_test``, ``y_test``).

    Each array's ``.npy`` header is checked (dtype, shape, the caps) before its data is
    read and decompressed, as a stream, into an array of exactly its size.
    """
    arrays = {}
    with Source(path) as source:
        path = source.path
        if source.gzip:
            raise InputError(path, "not a readable .npz file (it is gzip data, not a zip archive)")
        file = source._file
        try:
            _check_zip_directory(path, file, source.disk_size)
            with zipfile.ZipFile(file) as archive:
                names = set(archive.namelist())
                for split in ("train", "test"):
                    for key in (f"x_{split}", f"y_{split}"):
                        member = next((n for n in (key + ".npy", key) if n in names), None)
                        if member is None:
                            raise InputError(path, f"not an MNIST npz: missing array {key!r}")
                        with archive.open(member) as stream:
                            arrays[key] = read_npy(path, stream, _npz_header(path, split, key, arrays))
        except InputError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, zlib.error,
                NotImplementedError, RuntimeError) as err:
            raise InputError(path, f"not a readable .npz file ({first_line(err)})") from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise InputError(path, f"y_{split} holds labels that are not whole numbers")
        bad = np.flatnonzero((y < 0) | (y >= NUM_CLASSES))
        if bad.size:
            raise InputError(path, f"y_{split} record {bad[0]}: label {y[bad[0]]} is outside 0-9")
        arrays[f"x_{split}"] = np.ascontiguousarray(x)
        arrays[f"y_{split}"] = y.astype(np.uint8)
    return Dataset(**arrays, source=str(path.absolute()))


def _npz_header(path, split: str, key: str, arrays: dict):
    def check(shape, dtype):
        if key.startswith("x"):
            if dtype != np.uint8 or len(shape) != 3 or shape[1:] != IMAGE_SHAPE:
                raise InputError(path, f"{key} has shape {shape} {dtype}, expected (n, 28, 28) uint8")
            check_count(path, shape[0], "training images" if split == "train" else "test images")
        else:
            n = len(arrays[f"x_{split}"])
            if dtype.kind not in "iuf" or shape != (n,):
                raise InputError(path, f"{key} has shape {shape} {dtype}, expected ({n},) labels for "
                                       f"the {n} {split} images")
    return check


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
        check_count(idx["train_images"], len(x_train), "training images")
        check_count(idx["test_images"], len(x_test), "test images")
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


def load_local_dataset(path=None) -> Dataset | None:
    """MNIST from ``path``, else ``$MNIST_DATA_DIR``, else Keras's cache; ``None`` when only Keras's download
    is left. Needs no Keras: the command line loads the data so before a backend starts."""
    if path:
        return load_path(path)
    if os.environ.get(ENV_VAR):
        return load_path(os.environ[ENV_VAR])
    cached = keras_cache_file()
    if cached.is_file():
        return load_npz(cached)
    return None


def load_dataset(path=None, download: bool = True) -> Dataset:
    """Load MNIST from, in order: ``path``, ``$MNIST_DATA_DIR``, Keras's cache, Keras's download.

    The download needs Keras imported with a chosen backend; it is the last
    resort and its failure (no network) becomes one line that says how to
    provide the data instead.
    """
    found = load_local_dataset(path)
    if found is not None:
        return found
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
    """``uint8 (n, 28, 28)`` -> ``float32 (n, 28, 28, 1)`` in [0, 1], as the original scaled them.

    One float32 array (scaled in place), four bytes a pixel: callers that may hold many
    images convert them a batch at a time (see ``predict.predict_digits``).
    """
    scaled = images.astype(np.float32)[..., None]
    scaled /= 255.0
    return scaled


def one_hot(labels: np.ndarray) -> np.ndarray:
    """``(n,)`` class indices -> ``float32 (n, 10)``, for categorical cross-entropy."""
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]
