"""Training recipes: their settings, the learning-rate schedule, augmentation and the epoch-aware batches."""

import json

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import BACKEND, RANDOM_STATE, assert_clean_error, cli
from mnist_multibackend import recipes
from mnist_multibackend.errors import InputError
from mnist_multibackend.model import build_model, compile_model, load_saved_model
from mnist_multibackend.recipes import RECIPES, Augmentation, learning_rate_schedule, random_affine
from mnist_multibackend.training import EpochBatches, TrainConfig, time_to_accuracy


def test_the_original_recipe_is_the_default_and_unchanged():
    config = TrainConfig()
    assert (config.recipe, config.epochs, config.batch_size, config.learning_rate) == ("original", 12, 128, 1e-3)
    assert learning_rate_schedule(RECIPES["original"], 1e-3, 5628) == 1e-3  # a constant rate, as in 2017


def test_flags_override_a_recipe_and_unknown_recipes_are_refused():
    config = TrainConfig(recipe="fast", epochs=2)
    assert (config.epochs, config.batch_size, config.learning_rate) == (2, 128, RECIPES["fast"].learning_rate)
    with pytest.raises(InputError, match="unknown recipe 'quick'"):
        TrainConfig(recipe="quick")


def test_the_schedule_warms_up_to_its_peak_and_decays_to_zero():
    recipe = RECIPES["fast"]
    total = recipe.epochs * 469
    schedule = learning_rate_schedule(recipe, recipe.learning_rate, total)
    warmup = int(recipe.warmup_fraction * total)
    rate = lambda step: float(keras.ops.convert_to_numpy(schedule(step)))  # noqa: E731
    assert rate(0) == pytest.approx(recipe.learning_rate / 10)
    assert rate(warmup) == pytest.approx(recipe.learning_rate)
    assert rate(warmup // 2) < rate(warmup) and rate(total // 2) < rate(warmup)
    assert rate(total) == pytest.approx(0.0, abs=1e-9)


def test_a_model_trained_with_a_schedule_saves_and_loads_in_safe_mode(tmp_path, mnist):
    from mnist_multibackend import data

    schedule = learning_rate_schedule(RECIPES["fast"], 3e-3, 100)
    model = compile_model(build_model(), schedule)
    x, y = data.as_model_input(mnist.x_train[:64]), data.one_hot(mnist.y_train[:64])
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = load_saved_model(tmp_path / "m.keras")
    # The schedule is saved as Keras's own (so safe_mode loads it), and the step count goes with it.
    assert loaded.optimizer.get_config()["learning_rate"] == model.optimizer.get_config()["learning_rate"]
    assert loaded.optimizer.get_config()["learning_rate"]["class_name"] == "CosineDecay"
    assert int(loaded.optimizer.iterations) == 2
    # The same architecture: recipes change training only.
    assert [(layer.name, type(layer)) for layer in loaded.layers] == [(layer.name, type(layer))
                                                                        for layer in build_model().layers]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_no_augmentation_is_the_identity(mnist):
    from mnist_multibackend import data

    x = data.as_model_input(mnist.x_train[:32])
    out = random_affine(x, np.random.default_rng(0), Augmentation(degrees=0, shift=0, zoom=0))
    np.testing.assert_array_equal(out, x)


def test_augmentation_keeps_digits_recognisable(mnist):
    """Distorted digits stay in [0, 1], keep roughly their ink, and move: each is a new image."""
    from mnist_multibackend import data

    x = data.as_model_input(mnist.x_train[:256])
    out = random_affine(x, np.random.default_rng(1), RECIPES["best"].augmentation)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    ink_ratio = out.sum(axis=(1, 2, 3)) / x.sum(axis=(1, 2, 3))
    assert 0.7 < np.median(ink_ratio) < 1.3  # zoom of +-10 % scales the ink by at most ~21 %
    assert np.all(np.abs(out - x).max(axis=(1, 2, 3)) > 0.1)
    again = random_affine(x, np.random.default_rng(1), RECIPES["best"].augmentation)
    np.testing.assert_array_equal(out, again)  # the same generator state draws the same distortions


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0, 30), st.floats(0, 4), st.floats(0, 0.3))
def test_augmentation_only_blends_pixels(seed, degrees, shift, zoom):
    """Bilinear sampling: every output pixel lies between the darkest and brightest input pixel (or 0)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.2, 0.9, (3, 28, 28, 1)).astype(np.float32)
    out = random_affine(images, rng, Augmentation(degrees, shift, zoom))
    assert out.min() >= 0 and out.max() <= images.max() + 1e-6


def _epoch(batches: EpochBatches, epoch: int) -> np.ndarray:
    batches.epoch = epoch
    return np.concatenate([batches[i][1] for i in range(len(batches))])


def test_epoch_batches_serve_every_image_once_in_a_new_order_each_epoch():
    x = np.arange(1000, dtype=np.float32).reshape(1000, 1, 1, 1)
    y = np.arange(1000)
    batches = EpochBatches(x, y, batch_size=128, seed=5)
    assert len(batches) == 8 and len(batches[7][1]) == 1000 - 7 * 128
    first, second = _epoch(batches, 0), _epoch(batches, 1)
    assert sorted(first) == sorted(second) == list(range(1000))
    assert not np.array_equal(first, second)
    # The order depends on the seed and the epoch number only: a resumed run draws the same.
    np.testing.assert_array_equal(_epoch(EpochBatches(x, y, 128, seed=5), 1), second)
    assert not np.array_equal(_epoch(EpochBatches(x, y, 128, seed=6), 1), second)
    images, labels = batches[3]
    np.testing.assert_array_equal(images[:, 0, 0, 0], labels)  # images stay paired with their labels


def test_time_to_accuracy_is_the_first_epoch_at_the_target():
    assert time_to_accuracy([0.98, 0.9926, 0.9930], [30.0, 52.5, 75.0]) == {
        "target": 0.9925, "epoch": 2, "seconds": 52.5, "accuracy": 0.9926}
    assert time_to_accuracy([0.98, 0.99], [30.0, 52.5])["seconds"] is None


def test_fast_recipe_through_the_cli_records_its_schedule_and_time_to_accuracy(tmp_path, mnist_dir):
    result = cli("train", "--data", mnist_dir, "--recipe", "fast", "--epochs", 2, "--limit", 512, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["recipe"], metrics["epochs"], metrics["learning_rate"]) == ("fast", 2, RECIPES["fast"].learning_rate)
    assert metrics["learning_rate_schedule"] == "warm-up, cosine decay" and metrics["augmentation"] is None
    reached = metrics["time_to_accuracy"]
    assert reached["target"] == recipes.TARGET_ACCURACY and reached["seconds"] is None  # 512 images: far from it
    assert 0 < metrics["first_epoch_seconds"] < metrics["wall_seconds"]


@pytest.mark.slow
def test_best_recipe_trains_on_augmented_batches(tmp_path, mnist_dir):
    result = cli("train", "--data", mnist_dir, "--recipe", "best", "--epochs", 2, "--limit", 1024, "--seed", 1,
                 "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["recipe"] == "best" and metrics["augmentation"] == {"degrees": 10.0, "shift": 2.0, "zoom": 0.1}
    assert metrics["backend"] == BACKEND and metrics["test_accuracy"] > 0.3  # 16 steps: learning, not learnt


def test_a_resumed_run_must_keep_its_recipe(tmp_path, mnist_dir):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    state = {"epoch": 1, "weights": "epoch-0001.weights.h5", "history": {"loss": [1.0]}, "epoch_seconds": [1.0],
             "random": RANDOM_STATE, "settings": {"recipe": "fast", "epochs": 2}}  # what an interrupted fast run leaves
    (checkpoint / "checkpoint.json").write_text(json.dumps(state))
    (checkpoint / "epoch-0001.weights.h5").write_bytes(b"")  # refused before it is read
    resumed = cli("train", "--data", mnist_dir, "--recipe", "original", "--epochs", 2, "--limit", 256,
                  "--no-validate", "--checkpoint-dir", checkpoint, "--resume", "--out", tmp_path / "run")
    assert_clean_error(resumed, "recipe 'fast' there, 'original' now")
