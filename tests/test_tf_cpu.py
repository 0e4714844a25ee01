"""Fused batch norm on TensorFlow/CPU (tf_cpu.speed_up) changes the speed only: same outputs, gradients, moving
statistics, config and files as Keras's own BatchNormalization."""

import json
import zipfile

import keras
import numpy as np
import pytest

from mnist_multibackend import data
from mnist_multibackend.model import build_model, compile_model
from mnist_multibackend.tf_cpu import speed_up
from mnist_multibackend.training import speed_up as speed_up_for_training

NORMS = ["bn0", "bn1", "bn2", "bn3"]


def _twins():
    """A model with fused batch norm and a plain one with the same weights."""
    model = build_model()
    twin = keras.Model.from_config(model.get_config())
    twin.set_weights(model.get_weights())
    return model, twin


@pytest.mark.jax
def test_not_applied_on_jax():
    model = build_model()
    assert speed_up(model) == [] and all("call" not in vars(layer) for layer in model.layers)


@pytest.mark.tensorflow
def test_training_applies_it_to_every_batch_norm_layer():
    assert speed_up_for_training(build_model()) == NORMS


@pytest.mark.tensorflow
@pytest.mark.parametrize("settings", [
    {"synchronized": True}, {"renorm": True}, {"center": False}, {"epsilon": 1e-6}, {"axis": 1}, {"dtype": "float64"},
], ids=["synchronized", "renorm", "no-center", "tiny-epsilon", "channels-first", "float64"])
def test_left_alone_where_the_fused_kernel_would_compute_something_else(settings):
    layer = keras.layers.BatchNormalization(**settings)
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, layer(inputs))
    assert speed_up(model) == [] and "call" not in vars(layer)


def _batch_norm_step(activations, upstream, dtype: str, fuse: bool) -> list[np.ndarray]:
    """One training step of a lone BatchNormalization on ``activations``: its outputs, the gradients of
    sum(outputs * upstream) for its input, gamma and beta, and its moving mean and variance afterwards."""
    import tensorflow as tf

    channels = activations.shape[-1]
    rng = np.random.default_rng(1)
    layer = keras.layers.BatchNormalization(momentum=0.5, epsilon=1e-3, dtype=dtype)  # the model's epsilon
    inputs = keras.Input(activations.shape[1:], dtype=dtype)
    model = keras.Model(inputs, layer(inputs))
    layer.gamma.assign(rng.uniform(0.5, 1.5, channels))
    layer.beta.assign(rng.normal(size=channels))
    layer.moving_variance.assign(np.zeros(channels))  # afterwards half the batch variance, nothing else
    if fuse:
        assert speed_up(model) == [layer.name]
    x = tf.constant(activations.astype(dtype))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x, training=True)
        loss = tf.reduce_sum(y * upstream.astype(dtype))
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return [np.asarray(v, np.float64) for v in (y, *grads, layer.moving_mean, layer.moving_variance)]


@pytest.mark.tensorflow
@pytest.mark.parametrize("norm", NORMS)
def test_training_step_is_as_accurate_as_kerass_own(mnist, norm):
    """Each batch norm of the model, on the real activations it normalises (64 digits): outputs, gradients
    and moving statistics against a float64 computation, as close as Keras's own float32 form is."""
    model = build_model()
    conv = model.get_layer(norm.replace("bn", "conv"))  # the convolution just before it
    activations = keras.Model(model.input, conv.output)(data.as_model_input(mnist.x_train[:64]))
    activations = np.asarray(activations)
    upstream = np.random.default_rng(0).normal(size=activations.shape)
    fused = _batch_norm_step(activations, upstream, "float32", fuse=True)
    plain = _batch_norm_step(activations, upstream, "float32", fuse=False)
    exact = _batch_norm_step(activations, upstream, "float64", fuse=False)
    names = ["outputs", "input gradient", "gamma gradient", "beta gradient", "moving mean", "moving variance"]
    for name, a, b, reference in zip(names, fused, plain, exact, strict=True):
        scale = np.abs(reference).max()
        # Measured: both float32 forms within 5e-5 of the scale, the fused one up to 2x Keras's own error.
        assert np.abs(a - reference).max() <= max(1e-4 * scale, 4 * np.abs(b - reference).max()), name


@pytest.mark.tensorflow
def test_moving_variance_is_the_biased_one_as_kerass():
    """The fused kernel's batch variance has Bessel's correction, n / (n - 1): 1.005 for these 200 values per
    channel, undone, so the moving variance is Keras's. Well-conditioned values, so float32 rounding is far below."""
    values = np.random.default_rng(2).normal(1.0, 2.0, size=(8, 5, 5, 3))
    exact = _batch_norm_step(values, np.ones_like(values), "float64", fuse=False)
    fused = _batch_norm_step(values, np.ones_like(values), "float32", fuse=True)
    np.testing.assert_allclose(exact[5], 0.5 * values.var(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(fused[4], exact[4], rtol=1e-5)
    np.testing.assert_allclose(fused[5], exact[5], rtol=1e-5)


@pytest.mark.tensorflow
def test_inference_keeps_kerass_computation(mnist):
    x = data.as_model_input(mnist.x_test[:32])
    fused, plain = _twins()
    speed_up(fused)
    np.testing.assert_array_equal(fused.predict(x, verbose=0), plain.predict(x, verbose=0))


@pytest.mark.tensorflow
def test_fit_trains_and_saves_the_plain_layers(mnist, tmp_path):
    """A short model.fit with fused layers learns as the plain model does, and its file holds plain layers."""
    x = data.as_model_input(mnist.x_train[:512])
    y = data.one_hot(mnist.y_train[:512])
    losses = []
    for fuse in (True, False):
        keras.utils.set_random_seed(3)
        model = compile_model(build_model())
        if fuse:
            speed_up(model)
        history = model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
        losses.append(history.history["loss"])
        if fuse:
            model.save(tmp_path / "model.keras")
    np.testing.assert_allclose(losses[0], losses[1], rtol=2e-3)
    assert losses[0][1] < losses[0][0]
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        layers = {layer["name"]: layer for layer in json.loads(archive.read("config.json"))["config"]["layers"]}
    assert all(layers[name]["class_name"] == "BatchNormalization" for name in NORMS)
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert all("call" not in vars(loaded.get_layer(name)) for name in NORMS)
