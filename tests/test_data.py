"""Data formats: IDX, the original CSV, mnist.npz, and where the data comes from."""

import gzip
import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mnist_multibackend import data
from mnist_multibackend.errors import InputError

# Facts about the canonical files, from ../shared/README.md.
UNCOMPRESSED_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ---------------------------------------------------------------- the real files

@pytest.mark.parametrize("name", sorted(UNCOMPRESSED_MD5))
def test_gunzipped_bytes_are_canonical(mnist_dir, name):
    assert hashlib.md5(data.read_file_bytes(mnist_dir / name)).hexdigest() == UNCOMPRESSED_MD5[name]


def test_real_mnist_facts(mnist):
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_train.dtype == np.uint8
    assert mnist.x_test.shape == (10000, 28, 28)
    assert np.bincount(mnist.y_train).tolist() == TRAIN_COUNTS
    assert np.bincount(mnist.y_test).tolist() == TEST_COUNTS
    assert mnist.x_train.mean() / 255 == pytest.approx(0.1306604762738429, abs=1e-12)
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


def test_raw_and_gzip_idx_read_the_same(mnist_dir, tmp_path):
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    np.testing.assert_array_equal(data.read_idx(raw), data.read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz"))


def test_test_split_converts_to_the_original_csv(mnist_dir, mnist, tmp_path):
    out = tmp_path / "mnist_test.csv"
    rows = data.idx_to_csv(mnist_dir / "t10k-images-idx3-ubyte.gz", mnist_dir / "t10k-labels-idx1-ubyte.gz", out)
    assert rows == 10000
    lines = out.read_text().splitlines()
    assert len(lines) == 10000
    first = [int(v) for v in lines[0].split(",")]
    assert len(first) == 785 and first[0] == 7  # the first test digit is a 7
    assert first[1:] == mnist.x_test[0].ravel().tolist()
    images, labels = data.read_csv(out)
    np.testing.assert_array_equal(images, mnist.x_test)
    np.testing.assert_array_equal(labels, mnist.y_test)


def test_csv_pair_and_npz_load_like_the_idx_folder(mnist, tmp_path):
    data.write_csv(tmp_path / "mnist_train.csv", mnist.x_train[:300], mnist.y_train[:300])
    data.write_csv(tmp_path / "mnist_test.csv", mnist.x_test[:200], mnist.y_test[:200])
    from_folder = data.load_path(tmp_path)
    from_pair = data.load_path(f"{tmp_path / 'mnist_train.csv'},{tmp_path / 'mnist_test.csv'}")
    np.savez(tmp_path / "mnist.npz", x_train=mnist.x_train[:300], y_train=mnist.y_train[:300],
             x_test=mnist.x_test[:200], y_test=mnist.y_test[:200])
    from_npz = data.load_path(tmp_path / "mnist.npz")
    for loaded in (from_folder, from_pair, from_npz):
        np.testing.assert_array_equal(loaded.x_train, mnist.x_train[:300])
        np.testing.assert_array_equal(loaded.y_test, mnist.y_test[:200])


# ---------------------------------------------------------------- properties

mnist_like = st.integers(0, 40).flatmap(lambda n: st.tuples(
    hnp.arrays(np.uint8, (n, 28, 28)), hnp.arrays(np.uint8, (n,), elements=st.integers(0, 9))))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=mnist_like, compress=st.booleans())
def test_idx_to_csv_to_arrays_returns_the_original_bytes(tmp_path, arrays, compress):
    images, labels = arrays
    suffix = ".gz" if compress else ""
    data.write_idx(tmp_path / f"images{suffix}", images)
    data.write_idx(tmp_path / f"labels{suffix}", labels)
    data.idx_to_csv(tmp_path / f"images{suffix}", tmp_path / f"labels{suffix}", tmp_path / "out.csv")
    if len(images) == 0:
        with pytest.raises(InputError, match="empty file"):
            data.read_csv(tmp_path / "out.csv")
        return
    back_images, back_labels = data.read_csv(tmp_path / "out.csv")
    assert back_images.tobytes() == images.tobytes() and back_images.shape == images.shape
    assert back_labels.tobytes() == labels.tobytes()


idx_arrays = st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=idx_arrays, compress=st.booleans())
def test_idx_round_trip_any_type_and_shape(tmp_path, array, compress):
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    data.write_idx(path, array)
    back = data.read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()


@settings(max_examples=60, deadline=None)
@given(table=hnp.arrays(np.uint8, st.tuples(st.integers(1, 30), st.integers(1, 40))))
def test_csv_format_and_parse_are_inverse(table):
    text = data.format_csv_rows(table)
    assert text.decode().splitlines()[0] == ",".join(str(v) for v in table[0])
    np.testing.assert_array_equal(data.parse_csv_table("t.csv", text), table)


# ---------------------------------------------------------------- bad input

def _idx_header(code, dims):
    import struct

    return struct.pack(f">BBBB{len(dims)}I", 0, 0, code, len(dims), *dims)


IDX_CASES = [
    ("empty", b"", "empty file"),
    ("short", b"\0\0", "too short"),
    ("bad magic", b"PK\x03\x04" + b"\0" * 20, "not an IDX file: magic number 0x504b0304"),
    ("truncated header", _idx_header(8, (2, 28, 28))[:9], "truncated IDX header"),
    ("size mismatch", _idx_header(8, (2, 28, 28)) + b"\0" * 100, "IDX header says shape (2, 28, 28) (1568 data bytes)"),
    ("truncated gzip", gzip.compress(_idx_header(8, (3,)) + b"\1\2\3")[:-12], "truncated gzip"),
    ("corrupt gzip", b"\x1f\x8b\x08\x00" + b"\xff" * 30, "corrupt gzip"),
]


@pytest.mark.parametrize("name,content,message", IDX_CASES, ids=[c[0] for c in IDX_CASES])
def test_bad_idx_is_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        data.read_idx(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        data.read_idx(tmp_path / "nope")
    with pytest.raises(InputError, match="is a directory"):
        data.read_idx(tmp_path)


def test_image_and_label_counts_must_agree(tmp_path):
    data.write_idx(tmp_path / "images", np.zeros((3, 28, 28), np.uint8))
    data.write_idx(tmp_path / "labels", np.zeros((2,), np.uint8))
    with pytest.raises(InputError, match="2 labels for 3 images"):
        data.read_idx_pair(tmp_path / "images", tmp_path / "labels")


def _row(label=3, pixel="0"):
    return ",".join([str(label)] + [pixel] * 784)


CSV_CASES = [
    ("empty", "", "empty file"),
    ("short row", _row() + "\n" + "1,2,3\n", "line 2 has 3 values, line 1 has 785"),
    ("wrong width", "1,2,3\n", "3 values per line, expected 785"),
    ("non-numeric", _row(pixel="x") + "\n", "line 1: unexpected character b'x'"),
    ("negative", _row(pixel="-1") + "\n", "unexpected character b'-'"),
    ("out of range", _row() + "\n" + _row(pixel="256") + "\n", "line 2: value 256 is outside 0-255"),
    ("label out of range", _row(label=12) + "\n", "line 1: label 12 is outside 0-9"),
    ("blank line", _row() + "\n\n" + _row() + "\n", "line 2: empty value"),
]


@pytest.mark.parametrize("name,text,message", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_bad_csv_is_one_clear_error(tmp_path, name, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        data.read_csv(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_csv_accepts_crlf_and_a_missing_final_newline(tmp_path):
    path = tmp_path / "crlf.csv"
    path.write_bytes((_row(1, "7") + "\r\n" + _row(2, "255")).encode())
    images, labels = data.read_csv(path)
    assert labels.tolist() == [1, 2] and images[0, 0, 0] == 7 and images[1, 27, 27] == 255


# ---------------------------------------------------------------- where data comes from

def _tiny_npz(path, label):
    np.savez(path, x_train=np.zeros((2, 28, 28), np.uint8), y_train=np.full(2, label, np.uint8),
             x_test=np.zeros((1, 28, 28), np.uint8), y_test=np.full(1, label, np.uint8))


def test_source_order_is_flag_then_env_then_keras_cache(tmp_path, monkeypatch):
    for name, label in (("flag", 1), ("env", 2)):
        (tmp_path / name).mkdir()
        _tiny_npz(tmp_path / name / "mnist.npz", label)
    (tmp_path / "home" / "datasets").mkdir(parents=True)
    _tiny_npz(tmp_path / "home" / "datasets" / "mnist.npz", 3)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "env"))
    assert data.load_dataset(tmp_path / "flag").y_train[0] == 1
    assert data.load_dataset().y_train[0] == 2
    monkeypatch.delenv("MNIST_DATA_DIR")
    assert data.load_dataset().y_train[0] == 3


def test_no_data_anywhere_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    with pytest.raises(InputError) as err:
        data.load_dataset(download=False)
    message = str(err.value)
    assert "\n" not in message and "--data DIR" in message and "MNIST_DATA_DIR" in message


def test_folder_without_mnist_names_what_is_missing(tmp_path):
    with pytest.raises(InputError, match="no MNIST data here: expected the IDX files"):
        data.load_path(tmp_path)


def test_limit_keeps_the_first_training_images(mnist):
    small = mnist.limit(10)
    assert len(small.x_train) == 10 and len(small.x_test) == 10000
    np.testing.assert_array_equal(small.y_train, mnist.y_train[:10])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=hnp.arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 30))), chunk=st.integers(1, 300),
       crlf=st.booleans(), trailing=st.sampled_from(["", "\n", "\n\n\n"]))
def test_csv_parses_the_same_whatever_its_chunks(table, chunk, crlf, trailing, monkeypatch):  # each example sets it
    # Chunks are cut by bytes, at line ends: CRLF split across two chunks, blank lines at the end, any size.
    text = (data.format_csv_rows(table) + trailing.encode())
    if crlf:
        text = text.replace(b"\n", b"\r\n")
    monkeypatch.setattr(data, "CSV_CHUNK_BYTES", chunk)
    np.testing.assert_array_equal(data.parse_csv_table("t.csv", text), table)


def test_csv_lines_and_rows_are_capped(tmp_path, monkeypatch):
    path = tmp_path / "rows.csv"
    path.write_text(_row() + "\n" + "1" * (data.MAX_CSV_LINE_BYTES + 1) + "\n")
    with pytest.raises(InputError, match="line 2 is 4,097 bytes long, more than the cap of 4,096"):
        data.read_csv(path)
    path.write_text((_row() + "\n") * 5)
    monkeypatch.setattr(data, "MAX_IMAGES", 3)
    with pytest.raises(InputError, match="more than 3 rows"):
        data.read_csv(path)
    monkeypatch.setattr(data, "CSV_CHUNK_BYTES", 100)
    path.write_text(_row() + "\n\n" + _row() + "\n")
    with pytest.raises(InputError, match="line 2: empty value"):
        data.read_csv(path)
