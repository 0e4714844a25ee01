"""The compiled forward pass (inference.ForwardPass) and predict_digits on it: the same outputs as model.predict."""

import tracemalloc

import keras
import numpy as np
import pytest

from mnist_multibackend import data, predict
from mnist_multibackend.inference import ForwardPass, pad_to
from mnist_multibackend.legacy.architecture import runnable_on_this_backend
from mnist_multibackend.loading import load_saved_model

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def model(seed_dir):
    """The original trained model (99.25 %), loaded from its Keras 2 file. Keras's predict compiles it as
    the forward pass does (TensorFlow: XLA), so that the two differ only in how they loop; XLA against
    TensorFlow's own kernels is test_xla_and_tensorflow_kernels_agree_to_rounding."""
    model = load_saved_model(seed_dir / "MNIST_keras_CNN.h5", compile=False)
    model.jit_compile = ForwardPass(model, 1).uses_xla
    return model


def _keras_predict(model, digits, batch_size=128):
    return model.predict(data.as_model_input(digits), batch_size=batch_size, verbose=0)


def test_predict_digits_equals_keras_predict_on_real_digits(model, mnist):
    """1,000 test digits in batches of 128: seven whole batches and a padded one of 104, whose padding's
    outputs must not leak into the results (every row is compared, in order)."""
    digits = mnist.x_test[:1000]
    probabilities = predict.predict_digits(model, digits, batch_size=128)
    assert probabilities.shape == (1000, 10) and probabilities.dtype == np.float32
    expected = _keras_predict(model, digits)
    np.testing.assert_allclose(probabilities, expected, atol=TOLERANCE, rtol=0)
    assert np.mean(probabilities.argmax(axis=1) == mnist.y_test[:1000]) > 0.98  # the rows are the digits'


def test_a_batch_that_does_not_divide_the_inputs_gives_the_same_rows(model, mnist):
    """The last batch is padded with zeros to the compiled size; its rows are those of the digits alone."""
    digits = mnist.x_test[:70]
    forward = ForwardPass(model, 32)  # 32 + 32 + 6 (padded with 26 blank images)
    tail = forward.predict(digits, prepare=data.as_model_input)[64:]
    alone = ForwardPass(model, 6).predict(digits[64:], prepare=data.as_model_input)
    np.testing.assert_allclose(tail, alone, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(tail, _keras_predict(model, digits[64:]), atol=TOLERANCE, rtol=0)
    blank = forward.predict(np.zeros((1, 28, 28), np.uint8), prepare=data.as_model_input)
    assert np.abs(blank - tail).max() > 1e-3  # a padded row's output differs: it would show if it leaked


def test_fewer_digits_than_a_batch_and_no_digits(model, mnist):
    one = predict.predict_digits(model, mnist.x_test[:1])
    np.testing.assert_allclose(one, _keras_predict(model, mnist.x_test[:1]), atol=TOLERANCE, rtol=0)
    none = predict.predict_digits(model, np.empty((0, 28, 28), np.uint8))
    assert none.shape == (0, 10) and none.dtype == np.float32
    assert ForwardPass(model, 16).predict(np.empty((0, 28, 28, 1), np.float32)).shape == (0, 10)


def test_the_forward_pass_follows_the_weights(model, mnist):
    """The variables are read at each call: after set_weights, and after Keras's own predict (which on JAX
    hands the old arrays to the computation and drops them), the outputs are the model's current ones."""
    digits = mnist.x_test[:50]
    forward = ForwardPass(model, 25)
    before = forward.predict(digits, prepare=data.as_model_input)
    saved = model.get_weights()
    try:
        _keras_predict(model, digits)
        model.set_weights([w * 0.9 for w in saved])
        after = forward.predict(digits, prepare=data.as_model_input)
        np.testing.assert_allclose(after, _keras_predict(model, digits), atol=TOLERANCE, rtol=0)
        assert np.abs(after - before).max() > 1e-3
    finally:
        model.set_weights(saved)


@pytest.mark.tensorflow
def test_xla_and_tensorflow_kernels_agree_to_rounding(seed_dir, mnist):
    """Without XLA the forward pass computes exactly what Keras's predict computes on a CPU (its default);
    with XLA (the forward pass's default on TensorFlow) the sums are taken in another order: measured
    at most 1.2e-6 apart, the same digits."""
    model = load_saved_model(seed_dir / "MNIST_keras_CNN.h5", compile=False)
    assert not model.jit_compile and ForwardPass(model, 1).uses_xla
    digits = mnist.x_test[:1000]
    expected = _keras_predict(model, digits)
    plain = ForwardPass(model, 128, xla=False).predict(digits, prepare=data.as_model_input)
    np.testing.assert_allclose(plain, expected, atol=TOLERANCE, rtol=0)
    fused = ForwardPass(model, 128).predict(digits, prepare=data.as_model_input)
    np.testing.assert_allclose(fused, expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(fused.argmax(axis=1), expected.argmax(axis=1))


def test_a_legacy_channels_first_model(mnist):
    """A Theano-layout model (input (N, 1, 28, 28)), marked to run as the legacy loader marks it (on
    TensorFlow: XLA, whose CPU code takes NCHW), on real digits in that layout."""
    L = keras.layers
    model = runnable_on_this_backend(keras.Sequential([
        keras.Input((1, 28, 28)), L.Conv2D(4, (3, 3), data_format="channels_first"),
        L.BatchNormalization(axis=1), L.Activation("relu"), L.MaxPooling2D(data_format="channels_first"),
        L.Flatten(), L.Dense(10, activation="softmax")]))
    model.get_layer(index=1).set_weights([np.array([0.5, 1.5, 1.0, 2.0], np.float32)] * 2
                                         + [np.array([0.1, -0.2, 0.0, 0.3], np.float32), np.ones(4, np.float32)])

    def channels_first(digits):
        return data.as_model_input(digits).transpose(0, 3, 1, 2)

    digits = mnist.x_test[:100]
    outputs = ForwardPass(model, 32).predict(digits, prepare=channels_first)
    np.testing.assert_allclose(outputs, model.predict(channels_first(digits), batch_size=32, verbose=0),
                               atol=TOLERANCE, rtol=0)


def test_predict_digits_never_makes_a_float_copy_of_all_digits(model, mnist):
    """10,000 digits: their float32 copy would be 31 MB; converted a batch at a time, the arrays that
    prediction allocates stay far below (tracemalloc sees NumPy's allocations)."""
    digits = mnist.x_test
    float_copy = digits.size * 4
    predict.predict_digits(model, digits[:500])  # the backend's one-off allocations, outside the measurement
    tracemalloc.start()
    try:
        probabilities = predict.predict_digits(model, digits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert probabilities.shape == (10000, 10)
    assert peak < float_copy / 3, f"peak {peak / 2**20:.1f} MiB of NumPy and Python allocations"


def test_pad_to_appends_zero_rows():
    batch = np.ones((3, 2), np.float32)
    assert pad_to(batch, 3) is batch
    padded = pad_to(batch, 5)
    assert padded.shape == (5, 2) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:3], batch)
    assert not padded[3:].any()


def test_a_batch_of_another_size_is_refused(model):
    with pytest.raises(ValueError, match="a batch of 8 inputs"):
        ForwardPass(model, 8).dispatch(np.zeros((7, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        ForwardPass(model, 0)
