"""Bad input, every command: exit 2, one line naming the file and the problem, no traceback, nothing written.

``BAD_INPUT`` is the one table of cases; each runs the real ``mnist-mb`` in a
fresh process, in a folder of its own that must be unchanged afterwards. The
parsers are then fuzzed: random bytes and mutated valid files must give a clean
``InputError`` or a valid result, never another exception, never a hang.
"""

import contextlib
import dataclasses
import functools
import gzip
import io
import json
import os
import re
import shutil
import signal
import struct
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import RANDOM_STATE, SHARED, assert_clean_error, cli, cli_peak_rss, missing
from mnist_multibackend import checkpoint, data, model_files, predict, report
from mnist_multibackend.errors import InputError


def _idx(array) -> bytes:
    array = np.asarray(array, np.uint8)
    return struct.pack(f">BBBB{array.ndim}I", 0, 0, 8, array.ndim, *array.shape) + array.tobytes()


def _row(label=3, pixel="0", pixels=784) -> str:
    return ",".join(([str(label)] if label is not None else []) + [pixel] * pixels) + "\n"


def _png(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npy_header(shape, descr="|u1", version=(1, 0), fortran=False) -> bytes:
    """Just an .npy header that claims ``shape``, as NumPy writes it."""
    buffer = io.BytesIO()
    write = {(1, 0): np.lib.format.write_array_header_1_0, (2, 0): np.lib.format.write_array_header_2_0}[version]
    write(buffer, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buffer.getvalue()


def _npz(**members) -> bytes:
    """A zip of ``NAME.npy`` members (bytes as given), as np.savez lays them out."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(f"{name}.npy", content)
    return buffer.getvalue()


def _tiff(pixels) -> bytes:
    """A floating-point (mode F) TIFF: its pixels may be NaN."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.float32), mode="F").save(buffer, format="TIFF")
    return buffer.getvalue()


@functools.cache
def _gzip_of_zeros(header: bytes, mebibytes: int) -> bytes:
    """A gzip file of ``header`` and then ``mebibytes`` MiB of zero bytes, about 1 KiB a MiB: a gzip bomb.

    Deflate data for zeros that follow zeros decodes to zeros wherever it is laid down, so one
    MiB is compressed once and repeated (compressing a GiB would take seconds).
    """
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    start = deflate.compress(header) + deflate.flush(zlib.Z_SYNC_FLUSH)
    chunk = deflate.compress(zeros) + deflate.flush(zlib.Z_SYNC_FLUSH)
    crc = zlib.crc32(header)
    for _ in range(mebibytes):
        crc = zlib.crc32(zeros, crc)
    size = len(header) + (mebibytes << 20)
    return (b"\x1f\x8b\x08\0\0\0\0\0\0\xff" + start + chunk * mebibytes + deflate.flush()
            + struct.pack("<II", crc, size & 0xFFFFFFFF))


def _idx_header(dims, code=8) -> bytes:
    return struct.pack(f">BBBB{len(dims)}I", 0, 0, code, len(dims), *dims)


def _zip_directory_claims(archive: bytes, size: int) -> bytes:
    """``archive`` with its end record claiming a central directory of ``size`` bytes."""
    at = archive.rfind(b"PK\x05\x06")
    return archive[:at + 12] + struct.pack("<L", size) + archive[at + 16:]


DIGIT = np.zeros((40, 30), np.uint8)
DIGIT[8:32, 12:18] = 255  # a "1", light on dark
IMAGES, LABELS = _idx(np.zeros((3, 28, 28))), _idx([1, 2, 3])
GOOD_FOLDER = {"data/train-images-idx3-ubyte.gz": gzip.compress(IMAGES), "data/train-labels-idx1-ubyte": LABELS,
               "data/t10k-images-idx3-ubyte": IMAGES, "data/t10k-labels-idx1-ubyte": LABELS}
FOLDER = None  # a value in Case.files: make a directory
MODEL = "{model}"  # a value in Case.files: a copy of a real trained model
CHECKPOINT = {"epoch": 1, "weights": "epoch-0001.weights.h5", "settings": {"epochs": 5}, "history": {"loss": [1.0]},
              "epoch_seconds": [1.0], "random": RANDOM_STATE}
TRAIN = ("train", "--data", "{mnist}", "--limit", "64", "--epochs", "1", "--out", "{tmp}/run")
PREDICT = ("predict", "{model}")
EMPTY_SPLIT = _idx(np.zeros((0, 28, 28))), _idx(np.zeros(0))


def _checkpoint(**changes) -> bytes:
    return json.dumps({**CHECKPOINT, **changes}).encode()


def _not_a_classifier() -> bytes:
    """A valid .keras file of a model that maps 4 numbers to 2."""
    import tempfile

    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with tempfile.TemporaryDirectory() as folder:
        model.save(f"{folder}/m.keras")
        return open(f"{folder}/m.keras", "rb").read()


# Every case's command, backend and model included, stays under this. Predicting three digits
# with the original model peaked at 809 MiB on TensorFlow and 391 MiB on JAX (AVX2 host); the
# hostile files of issue 12 drove the tool to 3.7-14 GB by believing what a header or config claimed.
PEAK_MEMORY_MIB = 2048


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    args: tuple  # the command line; {tmp}: the case's folder, {model}: a trained model, {mnist}: MNIST,
    #              {seed}: the original's Keras 2 files
    files: dict  # what the case's folder holds: name -> bytes, text (formatted like args), FOLDER or MODEL
    expect: tuple  # fragments of the one error line; the first names the file
    # Only Keras can tell what is wrong (a config's classes or parameters, a weight's shape, a model's
    # outputs); every other case is refused before a backend starts, without importing one.
    needs_keras: bool = False


# ---------------------------------------------------------------- hostile Keras 2 and .keras files (issue 12)

SMALL_CONFIG = {"class_name": "Sequential", "config": [
    {"class_name": "Flatten", "config": {"name": "flatten", "batch_input_shape": [None, 28, 28, 1]}},
    {"class_name": "Dense", "config": {"name": "dense", "units": 10, "activation": "softmax"}}]}
SMALL_TRAINING = {"optimizer_config": {"class_name": "Adam", "config": {"lr": 0.001}},
                  "loss": "categorical_crossentropy", "metrics": ["accuracy"]}
SECRET = b"SECRET-MARKER-6f1d3c"  # what a hostile file tries to copy out of another file


def _h5(build) -> bytes:
    """The bytes of an HDF5 file that ``build(f)`` fills."""
    import tempfile

    import h5py

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/file.h5"
        with h5py.File(path, "w", libver="latest") as f:  # dense attribute storage: attributes over 64 KB
            build(f)
        with open(path, "rb") as handle:
            return handle.read()


def _names(group, attribute, names):
    group.attrs[attribute] = np.array([n.encode() for n in names], "S")


def _keras2_h5(config=SMALL_CONFIG, weights=None, optimizer=None, extra=None) -> bytes:
    """A Keras 2 full-model file of SMALL_CONFIG; ``weights``/``optimizer``/``extra`` change what it holds."""
    def build(f):
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["training_config"] = json.dumps(SMALL_TRAINING).encode()
        group = f.create_group("model_weights")
        _names(group, "layer_names", ["flatten", "dense"])
        _names(group.create_group("flatten"), "weight_names", [])
        dense = group.create_group("dense")
        _names(dense, "weight_names", ["dense/kernel:0", "dense/bias:0"])
        (weights or _plain_weights)(dense)
        if optimizer is not None:
            state = f.create_group("optimizer_weights")
            _names(state, "weight_names", ["Adam/iterations:0"] + [f"training/Adam/Variable_{i}:0" for i in range(4)])
            state.create_dataset("Adam/iterations:0", data=np.int64(3))
            optimizer(state)
        if extra is not None:
            extra(f)
    return _h5(build)


def _plain_weights(dense):
    dense.create_dataset("dense/kernel:0", data=np.zeros((784, 10), np.float32))
    dense.create_dataset("dense/bias:0", data=np.zeros(10, np.float32))


def _external_moment(state, secret="secret.txt"):
    for i in range(4):
        shape = (784, 10) if i % 2 == 0 else (10,)
        if i == 0:  # the first moment of the kernel: 31,360 bytes "of" the secrets file
            state.create_dataset(f"training/Adam/Variable_{i}:0", shape, np.float32,
                                 external=[(secret, 0, 784 * 10 * 4)])
        else:
            state.create_dataset(f"training/Adam/Variable_{i}:0", data=np.zeros(shape, np.float32))


def _external_weights(dense):
    dense.create_dataset("dense/kernel:0", (784, 10), np.float32, external=[("secret.txt", 0, 784 * 10 * 4)])
    dense.create_dataset("dense/bias:0", data=np.zeros(10, np.float32))


def _soft_linked_weights(dense):
    dense.create_dataset("dense/bias:0", data=np.zeros(10, np.float32))
    dense.create_dataset("real_kernel", data=np.zeros((784, 10), np.float32))
    import h5py

    dense["dense/kernel:0"] = h5py.SoftLink("/model_weights/dense/real_kernel")


def _external_link_weights(dense):
    import h5py

    dense["dense/kernel:0"] = h5py.ExternalLink("other.h5", "/kernel")
    dense.create_dataset("dense/bias:0", data=np.zeros(10, np.float32))


def _virtual_weights(dense):
    import h5py

    layout = h5py.VirtualLayout((784, 10), np.float32)
    layout[:] = h5py.VirtualSource("other.h5", "kernel", shape=(784, 10))
    dense.create_virtual_dataset("dense/kernel:0", layout)
    dense.create_dataset("dense/bias:0", data=np.zeros(10, np.float32))


def _huge_listed_three_times(f):
    # One fill-value dataset of 1 GiB declared (a few bytes stored), hard-linked under three names.
    huge = f.create_dataset("huge", (2**28,), np.float32, chunks=(2**20,), compression="gzip", fillvalue=1.0)
    for name in ("a", "b", "c"):
        f[name] = huge


def _huge_kernel(dense):
    dense.create_dataset("dense/kernel:0", (2**28,), np.float32, chunks=(2**20,), compression="gzip", fillvalue=1.0)
    dense.create_dataset("dense/bias:0", data=np.zeros(10, np.float32))


def _wide_config(units=250_000):
    config = json.loads(json.dumps(SMALL_CONFIG))
    config["config"][1]["config"]["units"] = units
    return config


def _big_model_config() -> bytes:
    def build(f):
        f.attrs["model_config"] = np.bytes_(json.dumps(SMALL_CONFIG).encode() + b" " * (3 * 2**20))
    return _h5(build)


def _keras_zip(members: dict, compression=None) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression or zipfile.ZIP_STORED) as archive:
        for name, content in members.items():
            if isinstance(content, int):  # that many spaces, written in pieces
                with archive.open(name, "w", force_zip64=True) as member:
                    for _ in range(content // 2**20):
                        member.write(b" " * 2**20)
            else:
                archive.writestr(name, content)
    return buffer.getvalue()


def _many_scans(scans=200) -> bytes:
    """A small progressive JPEG whose last scan is repeated: libjpeg decodes the whole image once per scan."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(DIGIT, np.uint8)).save(buffer, format="JPEG", progressive=True)
    raw = buffer.getvalue()
    last = raw.rfind(b"\xff\xda")
    return raw[:-2] + raw[last:-2] * scans + b"\xff\xd9"


def _kernel(values=None):
    """Dense weights whose kernel holds ``values`` (or is declared and never written, when None)."""
    def weights(dense):
        if values is None:
            dense.create_dataset("dense/kernel:0", (784, 10), np.float32)
        else:
            dense.create_dataset("dense/kernel:0", data=np.full((784, 10), values, np.float32))
        dense.create_dataset("dense/bias:0", data=np.zeros(10, np.float32))
    return weights


def _adam_moments(iterations):
    def optimizer(state):
        del state["Adam/iterations:0"]
        state.create_dataset("Adam/iterations:0", data=iterations)
        for i in range(4):
            state.create_dataset(f"training/Adam/Variable_{i}:0",
                                 data=np.zeros((784, 10) if i % 2 == 0 else (10,), np.float32))
    return optimizer


def _training_config(**optimizer):
    def extra(f):
        f.attrs["training_config"] = json.dumps({**SMALL_TRAINING, "optimizer_config": {
            "class_name": "Adam", "config": optimizer}}).encode()
    return extra


def _with_input_dtype(dtype):
    config = json.loads(json.dumps(SMALL_CONFIG))
    config["config"][0]["config"]["dtype"] = dtype
    return config


# Keras 3's own files and a .keras that Keras would extract whole: the caps on what it holds.
KERAS_FILES = {"metadata.json": "{}", "config.json": json.dumps(SMALL_CONFIG)}


def _many_members(count=12_000) -> bytes:
    return _keras_zip({**KERAS_FILES, **{f"assets/{i}": b"" for i in range(count)}})


def _npz_weights_declaring(shape) -> bytes:
    return _keras_zip({**KERAS_FILES, "model.weights.npz": _npz(kernel=_npy_header(shape, "<f8"))})


# The first 5,000 bytes of a .keras archive (a truncated download): the local header of metadata.json only.
MODEL_HEAD = _keras_zip({"metadata.json": "{}", "config.json": json.dumps(SMALL_CONFIG) * 200})[:5000]


BAD_INPUT = [
    Case("missing file", ("predict", "{model}", "{tmp}/nope.png"), {}, ("nope.png", "no such file")),
    Case("missing model", ("evaluate", "{tmp}/nope.keras"), {}, ("nope.keras", "no such file")),
    Case("a directory", ("predict", "{model}", "{tmp}/digits"), {"digits": FOLDER}, ("digits", "is a directory")),
    Case("empty file", ("convert", "{tmp}/images", "{tmp}/labels", "-o", "{tmp}/out.csv"),
         {"images": b"", "labels": LABELS}, ("images", "empty file")),
    Case("empty CSV", ("predict", "{model}", "{tmp}/rows.csv"), {"rows.csv": b"\n"}, ("rows.csv", "empty file")),
    Case("truncated gzip", TRAIN[:2] + ("{tmp}/data",) + TRAIN[3:],
         {**GOOD_FOLDER, "data/train-images-idx3-ubyte.gz": gzip.compress(IMAGES)[:-30]},
         ("train-images-idx3-ubyte.gz", "truncated gzip")),
    Case("IDX with the wrong magic", ("convert", "{tmp}/images", "{tmp}/labels", "-o", "{tmp}/out.csv"),
         {"images": b"\x12\x34" + IMAGES[2:], "labels": LABELS}, ("images", "not an IDX file: magic number 0x1234")),
    Case("IDX header disagrees with the size", ("predict", "{model}", "{tmp}/digits.idx"),
         {"digits.idx": IMAGES[:-784]}, ("digits.idx", "IDX header says shape (3, 28, 28)")),
    Case("image and label counts differ", ("convert", "{tmp}/images", "{tmp}/labels", "-o", "{tmp}/out.csv"),
         {"images": IMAGES, "labels": _idx([1, 2])}, ("labels", "2 labels for 3 images")),
    Case("CSV rows of the wrong width", ("predict", "{model}", "{tmp}/rows.csv"),
         {"rows.csv": _row(pixels=700).encode()}, ("rows.csv", "701 values per line, expected 785")),
    Case("CSV rows of unequal width", TRAIN[:2] + ("{tmp}/train.csv,{tmp}/test.csv",) + TRAIN[3:],
         {"train.csv": (_row() + _row(pixels=783)).encode(), "test.csv": _row().encode()},
         ("train.csv", "line 2 has 784 values, line 1 has 785")),
    Case("non-numeric pixel", ("predict", "{model}", "{tmp}/rows.csv"), {"rows.csv": _row(pixel="x").encode()},
         ("rows.csv", "line 1: unexpected character b'x'")),
    Case("pixel above 255", ("predict", "{model}", "{tmp}/rows.csv"),
         {"rows.csv": (_row(None) + _row(None, pixel="256")).encode()}, ("rows.csv", "line 2: value 256 is outside 0-255")),
    Case("negative pixel", ("predict", "{model}", "{tmp}/digits.npy"),
         {"digits.npy": _npy(np.full((2, 28, 28), -5, np.int16))}, ("digits.npy", "from -5 to -5, outside 0-255")),
    Case("label outside 0-9 in CSV", ("predict", "{model}", "{tmp}/rows.csv"), {"rows.csv": _row(label=12).encode()},
         ("rows.csv", "line 1: label 12 is outside 0-9")),
    Case("label outside 0-9 in IDX", ("convert", "{tmp}/images", "{tmp}/labels", "-o", "{tmp}/out.csv"),
         {"images": IMAGES, "labels": _idx([1, 2, 10])}, ("labels", "record 2: label 10 is outside 0-9")),
    Case("an image that is not an image", ("predict", "{model}", "{tmp}/digit.png"),
         {"digit.png": b"hello, I am text"}, ("digit.png", "not a PNG, JPEG, GIF, BMP, TIFF or WebP image")),
    Case("a truncated image", ("predict", "{model}", "{tmp}/digit.png"), {"digit.png": _png(DIGIT)[:60]},
         ("digit.png", "not a readable image")),
    Case("an image with no digit", ("predict", "{model}", "{tmp}/digit.png"),
         {"digit.png": _png(np.full((30, 30), 250))}, ("digit.png", "no digit found")),
    Case("a pickle in .npy", ("predict", "{model}", "{tmp}/digits.npy"),
         {"digits.npy": _npy(np.array([{"a": 1}], dtype=object))}, ("digits.npy", "Python objects are never read")),
    Case("an array of the wrong shape", ("predict", "{model}", "{tmp}/digits.npy"),
         {"digits.npy": _npy(np.zeros((3, 10), np.uint8))}, ("digits.npy", "array of shape (3, 10)")),
    Case("a model that is not a model (predict)", ("predict", "{tmp}/model.keras", "{tmp}/digit.png"),
         {"model.keras": b"PK\x03\x04 not really a zip", "digit.png": _png(DIGIT)},
         ("model.keras", "not a loadable Keras model")),
    Case("a Keras 2 .h5 that is not HDF5", ("predict", "{tmp}/model.h5", "{tmp}/digit.png"),
         {"model.h5": b"\x89HDF\r\n\x1a\n" + b"\0" * 50, "digit.png": _png(DIGIT)},
         ("model.h5", "not an HDF5 file")),
    Case("a weights-only .h5 as a model", ("evaluate", "{seed}/MNIST_keras_w_CNN.h5", "--data", "{mnist}"), {},
         ("MNIST_keras_w_CNN.h5", "holds weights only")),
    Case("a YAML file with a python/object tag",
         ("legacy", "import", "{tmp}/model.yaml", "--weights", "{seed}/MNIST_keras_w_CNN.h5", "--out", "{tmp}/m.keras"),
         {"model.yaml": "class_name: Model\nconfig: !!python/object/apply:os.system ['touch {tmp}/pwned']\n"},
         ("model.yaml", "refused YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'", "nothing in the file was run")),
    Case("a model that is not a model (evaluate)", ("evaluate", "{tmp}/model.keras", "--data", "{mnist}"),
         {"model.keras": b"\0" * 100}, ("model.keras", "not a loadable Keras model")),
    Case("a model that is not a model (report)", ("report", "{tmp}/model.keras", "--data", "{mnist}"),
         {"model.keras": b"\0" * 100}, ("model.keras", "not a loadable Keras model")),
    Case("a run folder without a model", ("report", "{tmp}/run"), {"run/history.csv": b"epoch,loss\n1,0.5\n"},
         ("run", "not a run folder")),
    Case("a history with an epoch twice", ("report", "{tmp}/run", "--data", "{mnist}"),
         {"run/model.keras": MODEL, "run/history.csv": b"epoch,loss\n1,0.5\n1,0.4\n"},
         ("history.csv", "epochs are [1, 1]")),
    Case("--resume without --checkpoint-dir", TRAIN + ("--resume",), {}, ("--resume", "needs --checkpoint-dir")),
    Case("a checkpoint that is not resumed", TRAIN + ("--checkpoint-dir", "{tmp}/ck"),
         {"ck/checkpoint.json": json.dumps(CHECKPOINT).encode(), "ck/epoch-0001.weights.h5": b""},
         ("ck", "holds the checkpoint of an unfinished run (epoch 1 of 5 done); add --resume")),
    Case("a checkpoint of other settings", TRAIN + ("--checkpoint-dir", "{tmp}/ck", "--resume"),
         {"ck/checkpoint.json": json.dumps(CHECKPOINT).encode(), "ck/epoch-0001.weights.h5": b""},
         ("checkpoint.json", "other settings (", "epochs 5 there, 1 now")),
    Case("augmented batches on several replicas", TRAIN + ("--recipe", "best", "--distribute"), {},
         ("--distribute", "not supported with --recipe best")),
    Case("checkpoints of a data-parallel run", TRAIN + ("--distribute", "--checkpoint-dir", "{tmp}/ck"), {},
         ("--checkpoint-dir", "not supported with --distribute")),
    Case("a corrupt checkpoint", TRAIN + ("--checkpoint-dir", "{tmp}/ck", "--resume"),
         {"ck/checkpoint.json": b'{"epoch": 1, "weigh'}, ("checkpoint.json", "not a readable checkpoint")),
    Case("an output folder that is a file", ("convert", "{tmp}/images", "{tmp}/labels", "-o", "{tmp}/images/out.csv"),
         {"images": IMAGES, "labels": LABELS}, ("images", "is a file, not a folder")),
    Case("an output folder that cannot be made", ("convert", "{tmp}/images", "{tmp}/labels", "-o",
                                                   "/proc/mnist-mb/out.csv"),
         {"images": IMAGES, "labels": LABELS}, ("/proc/mnist-mb", "No such file or directory")),
    # --- hostile HDF5, YAML and .keras files (issue 12)
    Case("an .h5 whose Adam state is stored in another file (import)",
         ("legacy", "import", "{tmp}/model.h5", "--out", "{tmp}/m.keras"),
         {"model.h5": _keras2_h5(optimizer=_external_moment), "secret.txt": SECRET * 2000},
         ("model.h5", "optimizer_weights/training/Adam/Variable_0:0 is stored in an external file; refused: "
                      "this tool reads only the file it is given")),
    Case("an .h5 whose Adam state is stored in another file (export)",
         ("legacy", "export", "{tmp}/model.h5", "--h5", "{tmp}/out.h5"),
         {"model.h5": _keras2_h5(optimizer=_external_moment), "secret.txt": SECRET * 2000},
         ("model.h5", "is stored in an external file")),
    Case("an .h5 whose weights are stored in another file", ("evaluate", "{tmp}/model.h5", "--data", "{mnist}"),
         {"model.h5": _keras2_h5(weights=_external_weights), "secret.txt": SECRET * 2000},
         ("model.h5", "model_weights/dense/dense/kernel:0 is stored in an external file")),
    Case("an .h5 with a soft link", ("predict", "{tmp}/model.h5", "{tmp}/digit.png"),
         {"model.h5": _keras2_h5(weights=_soft_linked_weights), "digit.png": _png(DIGIT)},
         ("model.h5", "model_weights/dense/dense/kernel:0 is a soft link; refused")),
    Case("an .h5 with an external link", ("legacy", "import", "{tmp}/model.h5", "--out", "{tmp}/m.keras"),
         {"model.h5": _keras2_h5(weights=_external_link_weights)},
         ("model.h5", "model_weights/dense/dense/kernel:0 is an external link; refused")),
    Case("an .h5 with a virtual dataset", ("evaluate", "{tmp}/model.h5", "--data", "{mnist}"),
         {"model.h5": _keras2_h5(weights=_virtual_weights)},
         ("model.h5", "model_weights/dense/dense/kernel:0 is a virtual dataset")),
    Case("an .h5 listing one huge dataset three times", ("legacy", "export", "{tmp}/model.h5", "--h5", "{tmp}/o.h5"),
         {"model.h5": _keras2_h5(extra=_huge_listed_three_times)},
         ("model.h5", "its datasets declare more than 2,147,483,648 bytes in all", "MAX_H5_DATA_BYTES")),
    Case("an .h5 whose weight declares a huge shape", ("predict", "{tmp}/model.h5", "{tmp}/digit.png"),
         {"model.h5": _keras2_h5(weights=_huge_kernel), "digit.png": _png(DIGIT)},
         ("model.h5", "dense/dense/kernel:0 has shape (268435456,); sequential/dense/kernel has (784, 10)"),
         needs_keras=True),
    Case("an .h5 whose config asks for 250,000 units", ("evaluate", "{tmp}/model.h5", "--data", "{mnist}"),
         {"model.h5": _keras2_h5(config=_wide_config())},
         ("model.h5", "the model asks for 196,250,000 parameters; more than 50,000,000 is refused",
          "MAX_PARAMETERS"), needs_keras=True),
    Case("an .h5 whose model_config is 3 MB", ("legacy", "import", "{tmp}/model.h5", "--out", "{tmp}/m.keras"),
         {"model.h5": _big_model_config()},
         ("model.h5", "attribute 'model_config' is 3,", "more than 2,097,152 bytes is refused", "MAX_CONFIG_BYTES")),
    Case("a YAML architecture of 3 MB",
         ("legacy", "import", "{tmp}/model.yaml", "--weights", "{seed}/MNIST_keras_w_CNN.h5", "--out", "{tmp}/m.keras"),
         {"model.yaml": "class_name: Sequential\nconfig: []\n" + "#" * (3 * 2**20)},
         ("model.yaml", "is 3,145,", "more than 2,097,152 bytes is refused", "MAX_CONFIG_BYTES")),
    Case("a YAML config asking for 250,000 units",
         ("legacy", "import", "{tmp}/model.yaml", "--weights", "{seed}/MNIST_keras_w_CNN.h5", "--out", "{tmp}/m.keras"),
         {"model.yaml": json.dumps(_wide_config()).encode()},
         ("model.yaml", "asks for 196,250,000 parameters"), needs_keras=True),
    Case("a .keras whose config.json is a compressed 64 MiB", ("evaluate", "{tmp}/model.keras", "--data", "{mnist}"),
         {"model.keras": _keras_zip({"metadata.json": "{}", "config.json": 64 * 2**20}, compression=8)},
         ("model.keras", "member config.json expands", "decompression bomb")),
    Case("a .keras whose config.json is 3 MiB", ("predict", "{tmp}/model.keras", "{tmp}/digit.png"),
         {"model.keras": _keras_zip({"metadata.json": "{}", "config.json": 3 * 2**20}), "digit.png": _png(DIGIT)},
         ("model.keras", "its config.json is 3,145,728 bytes; more than 2,097,152", "MAX_KERAS_CONFIG_BYTES")),
    Case("an HTML page saved as .h5 (inspect)", ("legacy", "inspect", "{tmp}/model.h5"),
         {"model.h5": b"<!DOCTYPE html><html><body>a repository's page</body></html>"},
         ("model.h5", "is an HTML page, not an HDF5 file")),
    Case("a Git LFS pointer in place of a .keras (inspect)", ("legacy", "inspect", "{tmp}/model.keras", "--json"),
         {"model.keras": b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 4238488\n"},
         ("model.keras", "is a Git LFS pointer to a 4,238,488-byte file")),
    Case("a YAML architecture that is not YAML (inspect)", ("legacy", "inspect", "{tmp}/model.yaml"),
         {"model.yaml": "class_name: [Sequential\n"}, ("model.yaml", "not valid YAML")),
    Case("a truncated .keras", ("evaluate", "{tmp}/model.keras", "--data", "{mnist}"),
         {"model.keras": MODEL_HEAD},
         ("model.keras", "not a zip archive, or a truncated one")),
    # --- work never lost (issue 12)
    Case("train --out is a file", TRAIN, {"run": b"a file"}, ("run", "is a file, not a folder")),
    Case("train --out is a folder under a file", TRAIN[:-1] + ("{tmp}/file/run",), {"file": b"x"},
         ("file", "is a file, not a folder")),
    Case("train --out holds an earlier run", TRAIN,
         {"run/model.keras": b"old", "run/MNIST_keras_CNN.h5": b"old", "run/report/misclassified.png": b"old"},
         ("run", "is not empty", "add --overwrite")),
    Case("--overwrite of a folder that is not a run folder", TRAIN + ("--overwrite",), {"run/notes.txt": b"mine"},
         ("run", "is not a run folder", "will not delete it")),
    Case("--checkpoint-dir inside --out", TRAIN + ("--checkpoint-dir", "{tmp}/run/ck"), {},
         ("--checkpoint-dir", "inside --out")),
    Case("bench --out is a file", ("bench", "--quick", "--backends", "jax", "--out", "{tmp}/bench"),
         {"bench": b"a file"}, ("bench", "is a file, not a folder")),
    Case("time-to-accuracy --out is a file", ("time-to-accuracy", "--runs", "1", "--epochs", "1", "--limit", "64",
                                              "--out", "{tmp}/tta"), {"tta": b"a file"}, ("tta", "is a file, not a folder")),
    Case("report --out is a file", ("report", "{model}", "--data", "{mnist}", "--out", "{tmp}/report"),
         {"report": b"a file"}, ("report", "is a file, not a folder")),
    Case("report's default folder is a file", ("report", "{tmp}/run", "--data", "{mnist}"),
         {"run/model.keras": MODEL, "run/report": b"a file"}, ("report", "is a file, not a folder")),
    Case("convert -o is a folder", ("convert", "{tmp}/images", "{tmp}/labels", "-o", "{tmp}/out"),
         {"images": IMAGES, "labels": LABELS, "out": FOLDER}, ("out", "is a folder; name a file")),
    Case("legacy import --out under a file", ("legacy", "import", "{seed}/MNIST_keras_CNN.h5", "--out",
                                              "{tmp}/file/m.keras"), {"file": b"x"}, ("file", "is a file, not a folder")),
    Case("legacy export --h5 is a folder", ("legacy", "export", "{model}", "--h5", "{tmp}/old.h5"),
         {"old.h5": FOLDER}, ("old.h5", "is a folder; name a file")),
    Case("a checkpoint of epoch 7 of 3", TRAIN + ("--checkpoint-dir", "{tmp}/ck", "--resume"),
         {"ck/checkpoint.json": _checkpoint(epoch=7, weights="epoch-0007.weights.h5", settings={"epochs": 3},
                                            history={"loss": [1.0] * 7}, epoch_seconds=[1.0] * 7),
          "ck/epoch-0007.weights.h5": b""}, ("checkpoint.json", "epoch 7 of 3")),
    Case("a checkpoint with non-numeric seconds", TRAIN + ("--checkpoint-dir", "{tmp}/ck", "--resume"),
         {"ck/checkpoint.json": _checkpoint(epoch_seconds=["soon"]), "ck/epoch-0001.weights.h5": b""},
         ("checkpoint.json", "epoch_seconds is not a list of 1 finite numbers")),
    Case("a checkpoint with an infinite loss", TRAIN + ("--checkpoint-dir", "{tmp}/ck", "--resume"),
         {"ck/checkpoint.json": _checkpoint().replace(b"[1.0]", b"[1e999]", 1), "ck/epoch-0001.weights.h5": b""},
         ("checkpoint.json", "history['loss'] is not a list of 1 finite numbers")),
    Case("a checkpoint with an overflowing generator state", TRAIN + ("--checkpoint-dir", "{tmp}/ck", "--resume"),
         {"ck/checkpoint.json": _checkpoint(random={**RANDOM_STATE, "numpy": ["MT19937", [2**40] * 624, 624, 0, 0.0]}),
          "ck/epoch-0001.weights.h5": b""}, ("checkpoint.json", "random.numpy is not a Mersenne Twister state")),
    Case("a checkpoint's history of the wrong length", TRAIN + ("--checkpoint-dir", "{tmp}/ck", "--resume"),
         {"ck/checkpoint.json": _checkpoint(history={"loss": [1.0, 2.0]}), "ck/epoch-0001.weights.h5": b""},
         ("checkpoint.json", "history['loss'] is not a list of 1 finite numbers")),
    Case("a weights file the checkpoint did not write", TRAIN + ("--checkpoint-dir", "{tmp}/ck"),
         {"ck/epoch-0001.weights.h5": b"someone else's"}, ("epoch-0001.weights.h5", "was not written by this")),
    Case("a model that is not a digit classifier (evaluate)", ("evaluate", "{tmp}/model.keras", "--data", "{mnist}"),
         {"model.keras": _not_a_classifier()}, ("model.keras", "not a digit classifier"), needs_keras=True),
    # --- hostile and huge data files (issue 12)
    Case("a gzip bomb: an IDX header of 4,000,000 images over 1 GiB of zeros", PREDICT + ("{tmp}/digits.idx.gz",),
         {"digits.idx.gz": lambda: _gzip_of_zeros(_idx_header((4_000_000, 28, 28)), 1024)},
         ("digits.idx.gz", "4,000,000 digits, more than the cap of 2,000,000 (MAX_IMAGES")),
    Case("a gzip bomb: a valid IDX header of 1,300,000 blank images", PREDICT + ("{tmp}/digits.idx.gz",),
         {"digits.idx.gz": lambda: _gzip_of_zeros(_idx_header((1_300_000, 28, 28)), 972)},
         ("digits.idx.gz", "gzip data expanding more than 200-fold", "MAX_GZIP_RATIO")),
    Case("a gzip bomb of zeros (no IDX header)", PREDICT + ("{tmp}/digits.idx.gz",),
         {"digits.idx.gz": lambda: _gzip_of_zeros(b"", 2048)}, ("digits.idx.gz", "magic number 0x00000000")),
    Case("a gzip bomb in a data folder", TRAIN[:2] + ("{tmp}/data",) + TRAIN[3:],
         {**GOOD_FOLDER, "data/train-images-idx3-ubyte.gz": lambda: _gzip_of_zeros(_idx_header((60000, 28, 28)), 1024)},
         ("train-images-idx3-ubyte.gz", "IDX header says shape (60000, 28, 28) (47040000 data bytes) but the file holds more")),
    Case("IDX dimensions whose product wraps in int64", PREDICT + ("{tmp}/digits.idx",),
         {"digits.idx": _idx_header((2**32 - 1, 2**32 - 1, 2**32 - 1)) + bytes(64)},
         ("digits.idx", "array of shape (4294967295, 4294967295, 4294967295)")),
    Case("IDX images whose count wraps in int64", ("convert", "{tmp}/images", "{tmp}/labels", "-o", "{tmp}/out.csv"),
         {"images": _idx_header((2**32 - 1, 28, 28)) + bytes(64), "labels": LABELS},
         ("images", "4,294,967,295 images, more than the cap of 2,000,000")),
    Case("an IDX header of 255 dimensions", PREDICT + ("{tmp}/digits.idx",),
         {"digits.idx": _idx_header((1,) * 255)}, ("digits.idx", "255 dimensions", "MAX_IDX_DIMS")),
    Case("an IDX that holds less than its header says (gzip)", PREDICT + ("{tmp}/digits.idx.gz",),
         {"digits.idx.gz": gzip.compress(_idx_header((1000, 28, 28)) + bytes(784 * 10))},
         ("digits.idx.gz", "IDX header says shape (1000, 28, 28) (784000 data bytes) but the file holds 7840")),
    Case("a CSV of one endless line", PREDICT + ("{tmp}/rows.csv",), {"rows.csv": b"1," * 100_000},
         ("rows.csv", "line 1 is longer than 4,096 bytes", "MAX_CSV_LINE_BYTES")),
    Case("a gzipped CSV of 1 GiB of short lines", PREDICT + ("{tmp}/rows.csv",),
         {"rows.csv": gzip.compress(b"0\n" * (1 << 20)) * 512}, ("rows.csv", "1 values per line, expected 785")),
    Case("a .npz member whose header claims 2^40 images", TRAIN[:2] + ("{tmp}/mnist.npz",) + TRAIN[3:],
         {"mnist.npz": _npz(x_train=_npy_header((2**40, 28, 28)) + bytes(784))},
         ("mnist.npz", "1,099,511,627,776 training images, more than the cap of 2,000,000")),
    Case("a .npz whose zip directory claims 4 GiB", TRAIN[:2] + ("{tmp}/mnist.npz",) + TRAIN[3:],
         {"mnist.npz": _zip_directory_claims(_npz(x_train=_npy(np.zeros((1, 28, 28), np.uint8))), 2**32 - 1)},
         ("mnist.npz", "a zip directory of 4,294,967,295 bytes", "MAX_ZIP_DIRECTORY_BYTES")),
    Case("a .npz with no test images", TRAIN[:2] + ("{tmp}/mnist.npz",) + TRAIN[3:],
         {"mnist.npz": _npz(x_train=_npy(np.zeros((2, 28, 28), np.uint8)), y_train=_npy(np.zeros(2, np.uint8)),
                            x_test=_npy(np.zeros((0, 28, 28), np.uint8)), y_test=_npy(np.zeros(0, np.uint8)))},
         ("mnist.npz", "holds no test images")),
    Case("an .npy header that claims 2^40 images", PREDICT + ("{tmp}/digits.npy",),
         {"digits.npy": _npy_header((2**40, 28, 28), "<f8") + bytes(64)},
         ("digits.npy", "1,099,511,627,776 digits, more than the cap of 2,000,000")),
    Case("an .npy header of 4 GiB", PREDICT + ("{tmp}/digits.npy",),
         {"digits.npy": b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**32 - 1) + b"{" * 100},
         ("digits.npy", ".npy header of 4,294,967,295 bytes", "MAX_NPY_HEADER_BYTES")),
    Case("an .npy of NaN pixels", PREDICT + ("{tmp}/digits.npy",),
         {"digits.npy": _npy(np.full((2, 28, 28), np.nan, np.float32))}, ("digits.npy", "NaN or infinity")),
    Case("an image of NaN pixels", PREDICT + ("{tmp}/digit.tif",),
         {"digit.tif": _tiff(np.where(DIGIT > 0, np.nan, 0.0))}, ("digit.tif", "pixels include NaN or infinity")),
    Case("an image of infinite pixels", PREDICT + ("{tmp}/digit.tif",),
         {"digit.tif": _tiff(np.where(DIGIT > 0, np.inf, 0.0))}, ("digit.tif", "pixels include NaN or infinity")),
    Case("a data folder with no training images", TRAIN[:2] + ("{tmp}/data",) + TRAIN[3:],
         {**GOOD_FOLDER, "data/train-images-idx3-ubyte.gz": gzip.compress(EMPTY_SPLIT[0]),
          "data/train-labels-idx1-ubyte": EMPTY_SPLIT[1]},
         ("train-images-idx3-ubyte.gz", "holds no training images")),
    Case("a progressive JPEG of 200 scans", PREDICT + ("{tmp}/scans.jpg",), {"scans.jpg": _many_scans()},
         ("scans.jpg", "a JPEG of 20", "scans; more than 100 is refused")),
    Case("an .npy whose shape is negative", PREDICT + ("{tmp}/digits.npy",), {"digits.npy": _npy_header((-1, 28, 28))},
         ("digits.npy", "shape (-1, 28, 28) is not a list of sizes")),
    Case("an .npy whose shape is a bool", PREDICT + ("{tmp}/digits.npy",), {"digits.npy": _npy_header((True, 28, 28))},
         ("digits.npy", "shape (True, 28, 28) is not a list of sizes")),
    Case("an .npz data set whose shape is a bool", TRAIN[:2] + ("{tmp}/mnist.npz",) + TRAIN[3:],
         {"mnist.npz": _npz(x_train=_npy_header((True, 28, 28)), y_train=_npy(np.array([1], np.uint8)),
                            x_test=_npy(np.zeros((1, 28, 28), np.uint8)), y_test=_npy(np.array([3], np.uint8)))},
         ("mnist.npz", "is not a list of sizes")),
    Case("a file name with a newline", PREDICT + ("{tmp}/bad\nname.csv",), {"bad\nname.csv": "1,2,3\n"},
         ("bad\\nname.csv", "3 values per line")),
    Case("a .keras of 12,000 members", ("evaluate", "{tmp}/model.keras"), {"model.keras": _many_members},
         ("model.keras", "holds 12,002 members; more than 10,000 is refused")),
    Case("a .keras whose model.weights.npz declares 4 GiB", ("evaluate", "{tmp}/model.keras"),
         {"model.keras": _npz_weights_declaring((2**29,))},
         ("model.keras (model.weights.npz)", "its arrays declare more than 2,147,483,648 bytes")),
    Case("a Keras 2 .h5 of NaN weights", ("predict", "{tmp}/model.h5", "{tmp}/digits.npy"),
         {"model.h5": _keras2_h5(weights=_kernel(np.nan)), "digits.npy": _npy(np.zeros((1, 28, 28), np.uint8))},
         ("model.h5", "dense/kernel:0 holds NaN or infinite values"), needs_keras=True),
    Case("a Keras 2 .h5 of infinite weights", ("predict", "{tmp}/model.h5", "{tmp}/digits.npy"),
         {"model.h5": _keras2_h5(weights=_kernel(-np.inf)), "digits.npy": _npy(np.zeros((1, 28, 28), np.uint8))},
         ("model.h5", "holds NaN or infinite values"), needs_keras=True),
    Case("a Keras 2 .h5 of weights declared and never written", ("predict", "{tmp}/model.h5", "{tmp}/digits.npy"),
         {"model.h5": _keras2_h5(weights=_kernel(None)), "digits.npy": _npy(np.zeros((1, 28, 28), np.uint8))},
         ("model.h5", "dense/kernel:0 was declared but never written"), needs_keras=True),
    Case("an Adam iteration count no int64 holds", ("legacy", "import", "{tmp}/model.h5", "--out", "{tmp}/m.keras"),
         {"model.h5": _keras2_h5(optimizer=_adam_moments(np.uint64(2**64 - 1)))},
         ("model.h5", "iteration count no int64 holds: 18446744073709551615"), needs_keras=True),
    Case("a learning rate of 10**400", ("legacy", "import", "{tmp}/model.h5", "--out", "{tmp}/m.keras"),
         {"model.h5": _keras2_h5(extra=_training_config(lr=10**400))},
         ("model.h5", "Adam settings not usable (int too large to convert to float)"), needs_keras=True),
    Case("a model of string inputs", ("predict", "{tmp}/model.h5", "{tmp}/digits.npy"),
         {"model.h5": _keras2_h5(config=_with_input_dtype("string")),
          "digits.npy": _npy(np.zeros((1, 28, 28), np.uint8))},
         ("model.h5", "string"), needs_keras=True),
    Case("a layer from a module that is a list", ("legacy", "import", "{tmp}/model.json", "--weights",
                                                  "{tmp}/weights.h5", "--out", "{tmp}/m.keras"),
         {"model.json": json.dumps({"class_name": "Sequential", "config": [
             {**SMALL_CONFIG["config"][0], "module": ["keras"]}, SMALL_CONFIG["config"][1]]}).encode(),
          "weights.h5": _keras2_h5()},
         ("model.json", "from module \"['keras']\"; only Keras's own classes load"), needs_keras=True),
    Case("a data folder with no test images", TRAIN[:2] + ("{tmp}/data",) + TRAIN[3:],
         {**GOOD_FOLDER, "data/t10k-images-idx3-ubyte": EMPTY_SPLIT[0], "data/t10k-labels-idx1-ubyte": EMPTY_SPLIT[1]},
         ("t10k-images-idx3-ubyte", "holds no test images")),
]


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", BAD_INPUT, ids=[case.name for case in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, trained_run, mnist_dir, request):
    model = trained_run[0] / "model.keras"
    seed = request.getfixturevalue("seed_dir") if "{seed}" in "".join(map(str, case.args)) else None
    places = {"tmp": tmp_path, "model": model, "mnist": mnist_dir, "seed": seed}
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is FOLDER:
            path.mkdir()
        elif content == MODEL:
            shutil.copy(model, path)
        elif isinstance(content, str):
            path.write_text(content.format(**places))
        elif callable(content):  # bytes too slow to build when the module is imported
            path.write_bytes(content())
        else:
            path.write_bytes(content)
    _assert_refused([str(a).format(**places) for a in case.args], tmp_path, case.expect,
                    backend_stand_ins=None if case.needs_keras else request.getfixturevalue("backend_stand_ins"))


@pytest.fixture(scope="session")
def backend_stand_ins(tmp_path_factory):
    """A folder of stand-in ``keras``, ``tensorflow`` and ``jax`` packages that record any import of them
    (in the file ``imported``) and refuse it: on the path, a command must get by without a backend."""
    folder = tmp_path_factory.mktemp("stand-ins")
    for name in ("keras", "tensorflow", "jax"):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(
            "import pathlib, traceback\n"
            "with open(pathlib.Path(__file__).parents[1] / 'imported', 'a') as f:\n"
            f"    f.write('{name} imported by\\n' + ''.join(traceback.format_stack()))\n"
            f"raise ImportError('{name}: a stand-in')\n")
    return folder


def _assert_refused(args, tmp_path, expect, backend_stand_ins=None):
    """Run ``mnist-mb ARGS``: exit 2, one line, no traceback, bounded memory, nothing written in ``tmp_path``;
    with ``backend_stand_ins``, without importing Keras or a backend."""
    before = _snapshot(tmp_path)
    env = None
    if backend_stand_ins:
        (backend_stand_ins / "imported").unlink(missing_ok=True)
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(backend_stand_ins), os.environ.get("PYTHONPATH")]))}
    result, peak_mib = cli_peak_rss(*args, env=env)
    if backend_stand_ins:
        imported = backend_stand_ins / "imported"
        assert not imported.exists(), f"refused only after importing a backend: {imported.read_text()[-3000:]}"
    assert_clean_error(result, *expect)
    assert peak_mib < PEAK_MEMORY_MIB, f"peak memory {peak_mib:.0f} MiB"
    assert result.stdout == ""
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed


def _sparse(size):
    def make(path):
        path.touch()
        os.truncate(path, size)  # no disk blocks: reads as zeros
    return make


def _in_folder(make):
    def made(path):
        path.parent.mkdir()
        make(path)
    return made


CONVERT = ("convert", "{mnist}/t10k-images-idx3-ubyte.gz", "{mnist}/t10k-labels-idx1-ubyte.gz", "-o")


# Inputs that are not regular files, or too large to write: made by the test, where the table's
# files cannot (issue 12). Each: a name, how to make {tmp}/NAME (or None), the command, the line.
SPECIAL_FILES = [
    ("a FIFO", ("digits.csv", os.mkfifo), PREDICT + ("{tmp}/digits.csv",),
     ("digits.csv", "is a FIFO (named pipe), expected a regular file")),
    ("a FIFO as the data", ("mnist.npz", os.mkfifo), TRAIN[:2] + ("{tmp}/mnist.npz",) + TRAIN[3:],
     ("mnist.npz", "is a FIFO (named pipe)")),
    ("/dev/zero", None, PREDICT + ("/dev/zero",), ("/dev/zero", "is a character device, expected a regular file")),
    ("a link to /dev/zero", ("digits.idx", lambda path: path.symlink_to("/dev/zero")), PREDICT + ("{tmp}/digits.idx",),
     ("digits.idx", "is a character device")),
    ("a sparse 30 GB file", ("digits.csv", _sparse(30 * 10**9)), PREDICT + ("{tmp}/digits.csv",),
     ("digits.csv", "30,000,000,000 bytes, more than the cap of 8,192,000,000 (MAX_FILE_BYTES")),
    ("a sparse 30 GB CSV as training data", ("train.csv", _sparse(30 * 10**9)),
     TRAIN[:2] + ("{tmp}/train.csv,{tmp}/train.csv",) + TRAIN[3:], ("train.csv", "more than the cap")),
    ("a sparse 1 GiB file of zeros", ("digits.csv", _sparse(1 << 30)), PREDICT + ("{tmp}/digits.csv",),
     ("digits.csv", "magic number 0x00000000")),
    ("a FIFO as the checkpoint", ("ck/checkpoint.json", _in_folder(os.mkfifo)),
     TRAIN + ("--checkpoint-dir", "{tmp}/ck", "--resume"),
     ("checkpoint.json", "not a readable checkpoint: is a FIFO (named pipe), expected a regular file")),
    ("a link to /dev/zero as the checkpoint", ("ck/checkpoint.json", _in_folder(lambda p: p.symlink_to("/dev/zero"))),
     TRAIN + ("--checkpoint-dir", "{tmp}/ck", "--resume"), ("checkpoint.json", "is a character device")),
    # The rename would replace the FIFO (or the device the link names: /dev/stdout, /dev/null) by a file.
    ("a FIFO as the output", ("out.csv", os.mkfifo), CONVERT + ("{tmp}/out.csv",),
     ("out.csv", "is a FIFO (named pipe), expected a regular file; name a regular file to write")),
    ("a link to /dev/null as the output", ("out.csv", lambda path: path.symlink_to("/dev/null")),
     CONVERT + ("{tmp}/out.csv",), ("out.csv", "is a character device")),
]


@pytest.mark.parametrize("name,make,args,expect", SPECIAL_FILES, ids=[case[0] for case in SPECIAL_FILES])
def test_special_and_huge_files_are_one_line_exit_2(name, make, args, expect, tmp_path, trained_run, mnist_dir,
                                                    backend_stand_ins):
    if make is not None:
        make[1](tmp_path / make[0])
    places = {"tmp": tmp_path, "model": trained_run[0] / "model.keras", "mnist": mnist_dir}
    _assert_refused([str(a).format(**places) for a in args], tmp_path, expect, backend_stand_ins)


# ---------------------------------------------------------------- fuzzing the parsers

class _Hang(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    def hang(signum, frame):
        raise _Hang(f"a parser ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _jpeg(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


VALID = {  # one valid file of each kind the parsers read
    "digits.idx": _idx(np.arange(2 * 784).reshape(2, 28, 28) % 256),
    "digits.idx.gz": gzip.compress(_idx(np.arange(784).reshape(1, 28, 28) % 256), mtime=0),
    "rows.csv": (_row(7, "12") + _row(1, "255")).encode(),
    "pixels.csv": _row(None, "3").encode(),
    "digit.png": _png(DIGIT),
    "digit.jpg": _jpeg(255 - DIGIT),
    "digits.npy": _npy(np.zeros((2, 28, 28), np.uint8)),
    "scaled.npy": _npy(np.full((1, 28, 28, 1), 0.5, np.float32)),
    "rows.csv.gz": gzip.compress((_row(7, "12") + _row(1, "255")).encode(), mtime=0),
    "digit.tif": _tiff(DIGIT),
    "mnist.npz": _npz(x_train=_npy(np.zeros((2, 28, 28), np.uint8)), y_train=_npy(np.array([1, 2], np.uint8)),
                      x_test=_npy(np.zeros((1, 28, 28), np.uint8)), y_test=_npy(np.array([3], np.int64))),
}


@st.composite
def _mutated(draw):
    name = draw(st.sampled_from(sorted(VALID)))
    content = bytearray(VALID[name])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(content)))
        how = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        if how == "replace" and at < len(content):
            content[at] = draw(st.integers(0, 255))
        elif how == "insert":
            content[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del content[at:at + draw(st.integers(1, 16))]
        elif how == "truncate":
            del content[at:]
    return name, bytes(content)


def _read_clean(path, reader):
    """The reader's result, or None for a clean InputError; any other exception fails the test."""
    with _time_limit(10):
        try:
            return reader(path)
        except InputError as err:
            assert str(path) in str(err) or err.subject.startswith(("-", "inputs")), err
            assert "\n" not in str(err)
            return None


def _check_digits(result):
    if result is not None:
        images, names = result
        assert images.dtype == np.uint8 and images.ndim == 3 and images.shape[1:] == (28, 28)
        assert len(names) == len(images) > 0


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(sample=_mutated())
def test_mutated_valid_files_are_read_or_refused_cleanly(tmp_path, sample):
    name, content = sample
    path = tmp_path / name
    path.write_bytes(content)
    _check_digits(_read_clean(path, predict.read_input))
    if ".idx" in name:
        result = _read_clean(path, data.read_idx)
        assert result is None or result.ndim >= 1
    if ".csv" in name:
        result = _read_clean(path, data.read_csv)
        assert result is None or result[0].shape[1:] == (28, 28)
    if name.endswith(".npz"):
        _check_dataset(_read_clean(path, data.load_npz))


def _check_dataset(result):
    if result is not None:
        for x, y in ((result.x_train, result.y_train), (result.x_test, result.y_test)):
            assert x.dtype == np.uint8 and x.shape[1:] == (28, 28) and len(x) > 0 and y.shape == (len(x),)
            assert y.dtype == np.uint8 and (y < 10).all()


@FUZZ
@given(content=st.binary(max_size=300),
       suffix=st.sampled_from(["", ".png", ".jpg", ".tif", ".csv", ".npy", ".npz", ".idx", ".gz"]))
def test_random_bytes_are_read_or_refused_cleanly(tmp_path, content, suffix):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(content)
    _check_digits(_read_clean(path, predict.read_input))
    _read_clean(path, data.read_idx)
    _read_clean(path, lambda p: data.read_csv(p, labelled=None))
    _check_dataset(_read_clean(path, data.load_npz))
    (tmp_path / "random.gz").write_bytes(gzip.compress(content))  # the same bytes behind gzip
    _check_digits(_read_clean(tmp_path / "random.gz", predict.read_input))


# Header fields a hostile file may set to anything: small sizes, MNIST's, and the largest a field holds.
_DIMENSIONS = st.one_of(st.integers(0, 30), st.sampled_from([28, 784, 60000, 2**31 - 1, 2**32 - 1]))


@FUZZ
@given(code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x42]),
       dims=st.lists(_DIMENSIONS, max_size=6), extra=st.integers(-8, 8), compress=st.booleans())
def test_idx_headers_that_claim_anything_are_read_or_refused_cleanly(tmp_path, code, dims, extra, compress):
    implied = int(np.prod(dims, dtype=object)) * {0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(code, 1)
    present = max(0, min(implied, 5000) + extra)
    content = struct.pack(f">BBBB{len(dims)}I", 0, 0, code, len(dims), *dims) + bytes(present)
    path = tmp_path / ("digits.idx.gz" if compress else "digits.idx")
    path.write_bytes(gzip.compress(content) if compress else content)
    result = _read_clean(path, data.read_idx)
    assert result is None or (result.shape == tuple(dims) and present == implied)
    _check_digits(_read_clean(path, predict.read_input))
    _read_clean(path, lambda p: data.read_idx_pair(p, p))


@FUZZ
@given(shape=st.lists(_DIMENSIONS, max_size=5).map(tuple),
       descr=st.sampled_from(["|u1", "<f4", ">f8", ">i2", "|b1", "<u8", "|O", "<U3", "|V8", "<c8", "<M8[s]"]),
       version=st.sampled_from([(1, 0), (2, 0)]), extra=st.integers(-8, 8), fortran=st.booleans())
def test_npy_headers_that_claim_anything_are_read_or_refused_cleanly(tmp_path, shape, descr, version, extra, fortran):
    implied = int(np.prod(shape, dtype=object)) * np.dtype(descr).itemsize
    content = _npy_header(shape, descr, version, fortran) + bytes(max(0, min(implied, 5000) + extra))
    (tmp_path / "digits.npy").write_bytes(content)
    _check_digits(_read_clean(tmp_path / "digits.npy", predict.read_input))
    (tmp_path / "mnist.npz").write_bytes(_npz(x_train=content, y_train=content, x_test=content, y_test=content))
    _check_dataset(_read_clean(tmp_path / "mnist.npz", data.load_npz))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                         st.sampled_from([b"epoch,loss\n1,0.5\n2,0.25\n", json.dumps(CHECKPOINT).encode()])
                         .flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n]))))
@example(content=b"epoch,loss\r1,0.5\r")  # a lone carriage return ends a line, as a text-mode read has it
def test_history_and_checkpoint_files_are_read_or_refused_cleanly(tmp_path, content):
    (tmp_path / "history.csv").write_bytes(content)
    (tmp_path / "checkpoint.json").write_bytes(content)
    (tmp_path / "epoch-0001.weights.h5").write_bytes(b"")
    _read_clean(tmp_path / "history.csv", report.read_history)
    _read_clean(tmp_path / "checkpoint.json", checkpoint.read_state)


@pytest.mark.parametrize("kind", ["a FIFO", "a link to /dev/zero", "a sparse 1 GiB file"])
def test_run_records_are_read_only_when_regular_and_small(tmp_path, kind, monkeypatch):
    """metrics.json, history.csv, checkpoint.json and the last bench's summary: a FIFO in their place
    would block the command for ever, /dev/zero fill the memory."""
    from mnist_multibackend import runs
    from mnist_multibackend.bench import last_run

    for name in ("metrics.json", "history.csv", "checkpoint.json", "last-bench.json"):
        path = tmp_path / name
        {"a FIFO": os.mkfifo, "a link to /dev/zero": lambda p: p.symlink_to("/dev/zero"),
         "a sparse 1 GiB file": _sparse(1 << 30)}[kind](path)
    expected = {"a FIFO": "is a FIFO (named pipe)", "a link to /dev/zero": "is a character device",
                "a sparse 1 GiB file": "a run record of more than 16,777,216 is refused"}[kind]
    with _time_limit(10):
        for reader, name in ((runs.read_record, "metrics.json"), (report.read_history, "history.csv"),
                             (checkpoint.read_state, "checkpoint.json")):
            with pytest.raises(InputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
                reader(tmp_path / name)
        (tmp_path / "model.keras").write_bytes(b"")
        assert runs.recorded_data_source(tmp_path / "model.keras") is None  # an unreadable record: no source
        monkeypatch.setenv(last_run.CACHE_VARIABLE, str(tmp_path))
        found = last_run.read({})
        assert found["status"] == "unreadable" and expected.split(" (")[0] in found["message"]


def test_keras_archive_caps_count_what_keras_would_extract(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    # More than Keras's three files: Keras extracts them all to a temporary folder.
    path.write_bytes(_keras_zip({**KERAS_FILES, "model.weights.h5": _h5(lambda f: None),
                                 "assets/vocabulary.txt": b"x" * 5000}))
    model_files.check_keras_archive(path)
    monkeypatch.setattr(model_files, "MAX_KERAS_ASSET_BYTES", 4096)
    with pytest.raises(InputError, match="holds 5,000 bytes besides the model's own files; more than 4,096"):
        model_files.check_keras_archive(path)
    # Two members of one name: which one Keras reads is zipfile's choice.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in (*KERAS_FILES.items(), ("config.json", "{}")):
            with pytest.warns(UserWarning, match="Duplicate name") if name == "config.json" and content == "{}" \
                    else contextlib.nullcontext():
                archive.writestr(name, content)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(InputError, match="holds two members named config.json"):
        model_files.check_keras_archive(path)


def test_npz_weights_in_a_keras_archive_are_held_to_the_models_parameters(tmp_path):
    """Keras's other weights format: each array's header is read, and their sizes summed against what the
    model and its optimizer hold (the loader counts the parameters; a model of 1,000 here)."""
    path = tmp_path / "model.keras"
    parameters = lambda text, where: 1_000  # noqa: E731 - what loading.count_keras_parameters would say
    path.write_bytes(_npz_weights_declaring((1_000,)))
    model_files.check_keras_archive(path, parameters)
    path.write_bytes(_npz_weights_declaring((100_000_000,)))  # 800 MB, in a file of a few hundred bytes
    with pytest.raises(InputError, match="its arrays declare more than 1,080,576 bytes"):
        model_files.check_keras_archive(path, parameters)
    path.write_bytes(_keras_zip({**KERAS_FILES, "model.weights.npz": _npz(kernel=_npy(np.array([object()])))}))
    with pytest.raises(InputError, match="Python objects are never read"):
        model_files.check_keras_archive(path, parameters)


def test_names_with_control_characters_stay_one_line_and_one_field():
    from mnist_multibackend.errors import one_line

    assert one_line("a\tb\nc\rd\x1b[31m é") == "a\\tb\\nc\\rd\\x1b[31m é"
    assert str(InputError("bad\nname.csv", "line 1\nline 2")) == "bad\\nname.csv: line 1\\nline 2"
    lines = predict.format_predictions(["a\tb\n3\t0.5.png"], np.eye(10, dtype=np.float32)[[7]])
    assert len(lines) == 1 and lines[0].split("\t") == ["a\\tb\\n3\\t0.5.png", "7", "1.0000"]


def test_an_external_dataset_is_refused_before_its_file_is_read(tmp_path):
    """The attack of issue 12 is real (h5py reads the secret through the file) and the tool never reads it."""
    import h5py

    from mnist_multibackend.legacy import import_legacy, load_weights_h5

    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET * 2000)
    model = tmp_path / "model.h5"
    model.write_bytes(_keras2_h5(optimizer=lambda state: _external_moment(state, str(secret))))
    with h5py.File(model, "r") as f:  # what an unguarded reader gets
        assert SECRET in np.asarray(f["optimizer_weights/training/Adam/Variable_0:0"]).tobytes()
    for load in (lambda: import_legacy(model), lambda: load_weights_h5(None, model)):
        with pytest.raises(InputError, match="is stored in an external file; refused") as caught:
            load()
        assert SECRET.decode() not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.h5", "secret.txt"]


# ---------------------------------------------------------------- fuzzing the Keras 2 readers

SEED_FILES = SHARED / "data" / "keras2-seed"


def _h5_mutations():
    """One change to the original full-model .h5, as a function of an open h5py file: the kinds of damage
    and trickery a stranger's file can carry, at the HDF5 level rather than as random bytes (which the
    HDF5 library itself must parse)."""
    import h5py

    def weight_paths(f):
        paths = []
        f["model_weights"].visititems(lambda name, obj: paths.append("model_weights/" + name)
                                      if isinstance(obj, h5py.Dataset) else None)
        f["optimizer_weights"].visititems(lambda name, obj: paths.append("optimizer_weights/" + name)
                                          if isinstance(obj, h5py.Dataset) else None)
        return sorted(paths)

    def reshape(index, shape, dtype):
        def change(f):
            path = weight_paths(f)[index % len(weight_paths(f))]
            del f[path]
            f.create_dataset(path, shape=shape, dtype=dtype)
        return change

    def drop(index):
        def change(f):
            del f[weight_paths(f)[index % len(weight_paths(f))]]
        return change

    def link(index, kind):
        def change(f):
            path = weight_paths(f)[index % len(weight_paths(f))]
            del f[path]
            f[path] = h5py.SoftLink("/model_weights") if kind == "soft" else h5py.ExternalLink("/etc/hostname", "/")
        return change

    def attribute(name, value):
        def change(f):
            group = f if name in ("model_config", "training_config", "keras_version", "backend") else \
                f["model_weights/fc1"]
            group.attrs[name] = value
        return change

    shapes = st.lists(st.sampled_from([0, 1, 3, 32, 256, 2**20]), max_size=4).map(tuple)
    dtypes = st.sampled_from(["f4", "f8", "i4", "u1", "S4"])
    configs = st.sampled_from(['{"class_name": "Model"}', "not json", '{"class_name": "Sequential", "config": []}',
                               '{"class_name": "Lambda", "config": {}}', "[]", "null", '"x" ' * 100])
    return st.one_of(
        st.builds(reshape, st.integers(0, 200), shapes, dtypes),
        st.builds(drop, st.integers(0, 200)),
        st.builds(link, st.integers(0, 200), st.sampled_from(["soft", "external"])),
        st.builds(attribute, st.just("model_config"), configs),
        st.builds(attribute, st.just("training_config"), configs),
        st.builds(attribute, st.just("weight_names"), st.lists(st.binary(max_size=20), max_size=5)),
        st.builds(attribute, st.just("layer_names"), st.lists(st.sampled_from([b"fc1", b"nope", b""]), max_size=3)),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(_h5_mutations(), min_size=1, max_size=3))
def test_mutated_keras2_h5_files_load_or_are_refused_cleanly(tmp_path, changes):
    import h5py

    from mnist_multibackend import legacy

    source = SEED_FILES / "MNIST_keras_CNN.h5"
    if not source.is_file():
        missing(f"the original Keras 2 files are not at {SEED_FILES}")
    path = tmp_path / "model.h5"
    shutil.copy(source, path)
    with h5py.File(path, "r+") as f:
        for change in changes:
            try:
                change(f)
            except (KeyError, ValueError, TypeError, OSError):  # a change the file's present form does not allow
                pass
    checked = _read_clean(path, model_files.check_model_file)
    model = _read_clean(path, legacy.load_legacy_h5)
    assert model is None or model.count_params() > 0
    assert checked is not None or model is None  # the check before the backend is never stricter than loading


@FUZZ
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".h5", ".hdf5", ".keras", ".yaml", ".json", ".pt"]))
def test_random_bytes_as_model_files_are_refused_cleanly_without_keras(tmp_path, content, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(content)
    assert _read_clean(path, model_files.check_model_file) is None
    weights = path if suffix in (".yaml", ".json") else None
    _read_clean(path, lambda p: model_files.check_legacy_sources(p, weights))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.one_of(st.none(), st.integers(0, 2**23)),
       flips=st.lists(st.tuples(st.integers(-2**23, 2**23), st.integers(1, 255)), max_size=4))
def test_damaged_keras_files_are_refused_cleanly_and_never_only_before_the_backend(tmp_path, trained_run, cut, flips):
    """Bytes flipped anywhere (a negative place counts from the end, where the zip directory is) and the
    file cut short: a clean refusal or a model; what the check before the backend refuses never loads."""
    from mnist_multibackend.loading import load_saved_model

    content = bytearray((trained_run[0] / "model.keras").read_bytes())
    for at, mask in flips:
        content[at % len(content)] ^= mask
    path = tmp_path / "model.keras"
    path.write_bytes(bytes(content[:cut]))
    checked = _read_clean(path, model_files.check_model_file)
    model = _read_clean(path, lambda p: load_saved_model(p, compile=False))
    assert checked is not None or model is None  # the check before the backend is never stricter than loading


def _yaml_mutations():
    text = (SEED_FILES / "MNIST_keras_CNN.yaml").read_text() if (SEED_FILES / "MNIST_keras_CNN.yaml").is_file() else ""
    lines = text.splitlines(keepends=True) or ["class_name: Model\n"]

    @st.composite
    def mutated(draw):
        out = list(lines)
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(out)))
            how = draw(st.sampled_from(["delete", "duplicate", "replace", "insert"]))
            if how == "delete" and at < len(out):
                del out[at]
            elif how == "duplicate" and at < len(out):
                out.insert(at, out[at])
            elif how == "replace" and at < len(out):
                indent = out[at][:len(out[at]) - len(out[at].lstrip())]
                out[at] = indent + draw(st.sampled_from([
                    "units: 250000\n", "class_name: Lambda\n", "- !!python/object/apply:os.system ['true']\n",
                    "filters: -3\n", "kernel_size: !!python/tuple [99999, 99999]\n", "&a [*a]\n",
                    "rate: .nan\n", "name: null\n", "config: {}\n"]))
            elif how == "insert":
                out.insert(at, draw(st.text(max_size=30)) + "\n")
        return "".join(out)

    return mutated()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_yaml_mutations())
def test_mutated_keras2_yaml_builds_or_is_refused_cleanly(tmp_path, text):
    from mnist_multibackend import legacy

    path = tmp_path / "model.yaml"
    path.write_text(text)
    model = _read_clean(path, legacy.load_yaml_file)
    assert model is None or model.count_params() > 0


def test_a_parameter_count_past_any_sensible_size_is_said_in_a_short_line():
    from mnist_multibackend.legacy.architecture import check_parameter_count

    for count, said in ((60_000_000, "asks for 60,000,000 parameters"), (10**400, "asks for about 2^1328 parameters"),
                        (10**5000, "asks for about 2^16609 parameters")):  # past Python's 4,300-digit str()
        with pytest.raises(InputError, match=f"{re.escape(said)}; more than 50,000,000") as refused:
            check_parameter_count(count, "model.h5")
        assert len(str(refused.value)) < 300


def test_a_training_that_diverges_writes_no_run_folder(tmp_path, mnist_dir):
    """A learning rate of 1e300: the weights become NaN. A run folder of them would be refused by every other
    command, so none is written (it trains first: only the outcome is bad)."""
    result = cli("train", "--data", mnist_dir, "--limit", "64", "--epochs", "1", "--learning-rate", "1e300",
                 "--out", tmp_path / "run")
    assert_clean_error(result, "--learning-rate", "training diverged: ", "at a learning rate of 1e+300",
                       "nothing was written")
    assert not (tmp_path / "run").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, expect", [
    (os.mkfifo, "keras.json: is a FIFO (named pipe), expected a regular file"),  # the import blocked for ever
    ('{"epsilon": 1}', "keras.json: Keras refuses its settings ("),  # an int: Keras (and TensorFlow's) want a float
    ("[1, 2]", "keras.json: Keras refuses its settings ('list' object has no attribute 'get')"),
])
def test_a_keras_json_keras_cannot_read_is_one_line(tmp_path, content, expect):
    home = tmp_path / "keras-home"
    home.mkdir()
    if callable(content):
        content(home / "keras.json")
    else:
        (home / "keras.json").write_text(content)
    np.save(tmp_path / "digits.npy", np.zeros((1, 28, 28), np.uint8))
    result = cli("predict", SEED_FILES / "MNIST_keras_CNN.h5", tmp_path / "digits.npy", env={"KERAS_HOME": str(home)})
    assert_clean_error(result, expect)


@pytest.mark.jax
@pytest.mark.parametrize("platforms", ["bogus", "rocm"])
def test_a_jax_platform_jax_does_not_have_is_one_line(tmp_path, platforms):
    np.save(tmp_path / "digits.npy", np.zeros((1, 28, 28), np.uint8))
    result = cli("predict", SEED_FILES / "MNIST_keras_CNN.h5", tmp_path / "digits.npy", env={"JAX_PLATFORMS": platforms})
    assert_clean_error(result, "JAX_PLATFORMS", f"'{platforms}': Unable to initialize backend")
