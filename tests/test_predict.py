"""Prediction for other programs: real MNIST digits as image files, CSV rows, IDX and .npy, through the CLI."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import cli
from mnist_multibackend import data, predict
from mnist_multibackend.errors import InputError


def _centre_of_mass(image):
    image = image.astype(np.float64)
    rows, cols = np.indices(image.shape)
    return (rows * image).sum() / image.sum(), (cols * image).sum() / image.sum()


def _similarity(a, b) -> float:
    """Correlation of two 28x28 digits, the better over placements up to one pixel apart.

    Centring the mass with whole-pixel moves leaves the centre up to half a pixel
    off, in MNIST as here, so the same digit may come back one pixel over.
    """
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return max(np.corrcoef(np.roll(a, s, axis=(0, 1)).ravel(), b.ravel())[0, 1] for s in shifts)


def _render(digit: np.ndarray, size: int, canvas: tuple[int, int], offset: tuple[int, int], dark_on_light: bool):
    """An MNIST digit as a scanned picture: scaled up to ``size`` pixels, somewhere on a larger page."""
    big = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
    page = Image.new("L", (canvas[1], canvas[0]), 0)
    page.paste(big, (offset[1], offset[0]))
    return Image.fromarray(255 - np.asarray(page)) if dark_on_light else page


# ---------------------------------------------------------------- preparing pictures as MNIST digits

@pytest.mark.parametrize("dark_on_light", [False, True], ids=["light-on-dark", "dark-on-light"])
@pytest.mark.parametrize("size,canvas,offset", [(28, (40, 50), (0, 20)), (90, (200, 150), (100, 7)),
                                               (300, (320, 480), (10, 170))])
def test_a_rendered_mnist_digit_comes_back_as_itself(mnist, size, canvas, offset, dark_on_light):
    """Scaling to a 20x20 box and centring the mass undoes any size and place: the original digit returns."""
    for index in range(20):
        digit = mnist.x_test[index]
        picture = np.asarray(_render(digit, size, canvas, offset, dark_on_light))
        prepared = predict.preprocess_image(picture)
        assert prepared.dtype == np.uint8 and prepared.shape == (28, 28)
        assert prepared.max() == 255 and prepared[0].max() == 0 and prepared[:, -1].max() == 0
        assert _similarity(prepared, digit) > 0.9, index
        rows, cols = np.flatnonzero(prepared.any(1)), np.flatnonzero(prepared.any(0))
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (predict.DIGIT_BOX - 1, predict.DIGIT_BOX)
        assert np.allclose(_centre_of_mass(prepared), predict.CENTRE, atol=0.6)


def test_invert_choices_decide_the_polarity(mnist):
    dark_on_light = 255 - np.asarray(_render(mnist.x_test[0], 56, (70, 70), (7, 7), False))
    auto = predict.preprocess_image(dark_on_light, "auto")
    np.testing.assert_array_equal(predict.preprocess_image(dark_on_light, "yes"), auto)
    assert _similarity(auto, mnist.x_test[0]) > 0.9
    with pytest.raises(ValueError, match="no digit found"):  # nothing is lighter than the paper
        predict.preprocess_image(dark_on_light, "no")


def test_grey_paper_and_noise_are_background(mnist):
    rng = np.random.default_rng(0)
    page = np.asarray(_render(mnist.x_test[1], 84, (120, 120), (20, 10), True), np.float64)
    page = np.clip(page * 0.7 + 40 + rng.normal(0, 6, page.shape), 0, 255)  # grey paper, dark-grey ink
    prepared = predict.preprocess_image(page)
    assert _similarity(prepared, mnist.x_test[1]) > 0.9


def test_a_blank_picture_has_no_digit():
    with pytest.raises(ValueError, match="no digit found"):
        predict.preprocess_image(np.full((50, 40), 200, np.uint8))


def test_transparent_strokes_are_laid_on_a_contrasting_ground(mnist, tmp_path):
    alpha = np.asarray(_render(mnist.x_test[0], 56, (70, 70), (5, 5), False))
    for colour in (0, 255):  # black strokes and white strokes on a transparent canvas
        rgba = np.zeros((*alpha.shape, 4), np.uint8)
        rgba[..., :3] = colour
        rgba[..., 3] = alpha
        Image.fromarray(rgba, "RGBA").save(tmp_path / f"strokes{colour}.png")
        images, _ = predict.load_inputs([tmp_path / f"strokes{colour}.png"])
        assert _similarity(images[0], mnist.x_test[0]) > 0.9, colour


def test_a_float_tiff_is_read_in_0_1_as_in_0_255(mnist, tmp_path):
    """Floating-point pixels in 0-1 are the model's own scaling, as an .npy of floats may hold them."""
    picture = np.asarray(_render(mnist.x_test[0], 56, (70, 70), (5, 5), False), np.float32)
    for scale in (1.0, 255.0):
        Image.fromarray(picture / 255.0 * scale, mode="F").save(tmp_path / f"digit{scale:.0f}.tif")
    images, _ = predict.load_inputs([tmp_path / "digit1.tif", tmp_path / "digit255.tif"])
    np.testing.assert_array_equal(images[0], images[1])
    assert _similarity(images[0], mnist.x_test[0]) > 0.9


def test_array_inputs_name_their_rows(mnist, tmp_path):
    digits, labels = mnist.x_test[:4], mnist.y_test[:4]
    data.write_csv(tmp_path / "labelled.csv", digits, labels)
    (tmp_path / "pixels.csv").write_bytes(data.format_csv_rows(digits.reshape(4, -1)))
    data.write_idx(tmp_path / "digits.idx", digits)
    np.save(tmp_path / "scaled.npy", digits.astype(np.float32)[..., None] / 255)  # the model's own scaling
    np.save(tmp_path / "one.npy", digits[0])
    paths = [tmp_path / n for n in ("labelled.csv", "pixels.csv", "digits.idx", "scaled.npy", "one.npy")]
    images, names = predict.load_inputs(paths)
    assert images.shape == (17, 28, 28) and images.dtype == np.uint8
    for start in (0, 4, 8, 12):
        np.testing.assert_array_equal(images[start:start + 4], digits)
    np.testing.assert_array_equal(images[16], digits[0])
    assert names[:2] == [f"{paths[0]}:1", f"{paths[0]}:2"] and names[8] == f"{paths[2]}[0]"
    assert names[16] == str(paths[4])


def test_a_label_file_is_not_images(mnist_dir):
    with pytest.raises(InputError, match="a label file"):
        predict.load_inputs([mnist_dir / "t10k-labels-idx1-ubyte.gz"])


# ---------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def digit_pictures(tmp_path_factory, mnist, trained_run):
    """Real test digits, one per class, that the trained model gets right, drawn as pictures of all kinds."""
    from mnist_multibackend.model import load_saved_model

    model = load_saved_model(trained_run[0] / "model.keras")
    # 2,000 digits: the short training run is sure of some classes less often than of others.
    probabilities = predict.predict_digits(model, mnist.x_test[:2000])
    folder = tmp_path_factory.mktemp("pictures")
    pictures = {}
    for label in range(10):
        sure = np.flatnonzero((mnist.y_test[:2000] == label) & (probabilities[:, label] > 0.95))
        index = int(sure[0])
        size = 40 + 30 * label
        picture = _render(mnist.x_test[index], size, (size + 30, size + 40), (3 * label, 4 * label),
                          dark_on_light=label % 2 == 0)
        path = folder / f"digit{label}.{'jpg' if label in (3, 6) else 'png'}"
        picture.save(path, quality=92) if path.suffix == ".jpg" else picture.save(path)
        pictures[path] = label
    return pictures


def test_predict_reads_pictures_of_real_digits(trained_run, digit_pictures):
    out, _ = trained_run
    result = cli("predict", out / "model.keras", *digit_pictures)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [name for name, _, _ in lines] == [str(p) for p in digit_pictures]
    assert [int(digit) for _, digit, _ in lines] == list(digit_pictures.values())
    assert all(0.5 < float(p) <= 1 for _, _, p in lines)


def test_predict_json_has_all_ten_probabilities(trained_run, digit_pictures):
    out, _ = trained_run
    paths = list(digit_pictures)[:3]
    result = cli("predict", out / "model.keras", *paths, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in records] == [str(p) for p in paths]
    for record, label in zip(records, list(digit_pictures.values())[:3]):
        assert record["digit"] == label and len(record["probabilities"]) == 10
        assert sum(record["probabilities"]) == pytest.approx(1, abs=1e-4)
        assert record["probability"] == max(record["probabilities"])


def test_predict_a_whole_test_file_agrees_with_evaluate(trained_run, mnist_dir, mnist):
    """10,000 IDX records in one call: one line each, in order, as accurate as evaluate says."""
    out, _ = trained_run
    result = cli("predict", out / "model.keras", mnist_dir / "t10k-images-idx3-ubyte.gz")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 10000
    assert lines[9999].startswith(f"{mnist_dir / 't10k-images-idx3-ubyte.gz'}[9999]\t")
    predicted = np.array([int(line.split("\t")[1]) for line in lines])
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.mean(predicted == mnist.y_test) == pytest.approx(metrics["test_accuracy"], abs=2e-4)


def test_predict_csv_with_and_without_labels(trained_run, mnist, tmp_path):
    out, _ = trained_run
    data.write_csv(tmp_path / "rows.csv", mnist.x_test[:5], mnist.y_test[:5])
    (tmp_path / "pixels.csv").write_bytes(data.format_csv_rows(mnist.x_test[:5].reshape(5, -1)))
    result = cli("predict", out / "model.keras", tmp_path / "rows.csv", tmp_path / "pixels.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [name for name, _, _ in rows] == [f"{tmp_path / f}:{i}" for f in ("rows.csv", "pixels.csv")
                                            for i in range(1, 6)]
    assert [d for _, d, _ in rows[:5]] == [d for _, d, _ in rows[5:]]


def test_the_original_keras2_model_reads_the_pictures_too(seed_dir, digit_pictures):
    """The 2017 model (99.25 %), opened from its Keras 2 .h5 file by the same loader."""
    result = cli("predict", seed_dir / "MNIST_keras_CNN.h5", *digit_pictures, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["digit"] for r in records] == list(digit_pictures.values())
    assert all(r["probability"] > 0.9 for r in records)
