"""oneDNN's convolution weight gradient inside JAX (jax_onednn): XLA's result, on XLA's buffers, errors as errors."""

import numpy as np
import pytest

from mnist_multibackend import jax_onednn

pytestmark = [pytest.mark.jax, pytest.mark.skipif(not jax_onednn.available(), reason="oneDNN is not installed here")]

# The model's four convolutions at a training batch, and shapes it does not have: one image, an odd batch,
# a 5x5 and a non-square kernel on a non-square image.
SHAPES = [((128, 28, 28, 1), (3, 3, 1, 32)), ((128, 26, 26, 32), (3, 3, 32, 32)),
          ((128, 12, 12, 32), (3, 3, 32, 64)), ((128, 10, 10, 64), (3, 3, 64, 64)),
          ((1, 26, 26, 32), (3, 3, 32, 32)), ((45, 12, 12, 32), (3, 3, 32, 64)),
          ((7, 16, 16, 3), (5, 5, 3, 8)), ((5, 11, 17, 4), (1, 3, 4, 6))]


def _case(input_shape, kernel_shape, seed=0):
    rng = np.random.default_rng(seed)
    n, h, w, _ = input_shape
    inputs = rng.normal(size=input_shape).astype("float32")
    upstream = rng.normal(size=(n, h - kernel_shape[0] + 1, w - kernel_shape[1] + 1, kernel_shape[3]))
    return inputs, upstream.astype("float32")


def _xla_weight_gradient(inputs, upstream, kernel_shape):
    import jax

    from mnist_multibackend.jax_cpu import valid_conv

    kernel = np.zeros(kernel_shape, "float32")
    return np.asarray(jax.vjp(lambda k: valid_conv(inputs, k), kernel)[1](upstream)[0])


def _assert_close(actual, expected):
    # Float32 sums of up to 86,528 products per element, in another order: a tolerance on the gradient's scale.
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert np.abs(expected).max() > 0


def test_version_is_onednn_3():
    assert jax_onednn.version().startswith("3.")


@pytest.mark.parametrize("input_shape, kernel_shape", SHAPES)
def test_in_a_jax_computation_it_is_xlas_weight_gradient(input_shape, kernel_shape):
    import jax

    inputs, upstream = _case(input_shape, kernel_shape)
    step = jax.jit(lambda x, g: jax_onednn.conv_weight_gradient(x * 1.0, g, kernel_shape))
    assert jax_onednn.TARGET in step.lower(inputs, upstream).as_text()  # oneDNN's custom call, not a fallback
    _assert_close(np.asarray(step(inputs, upstream)), _xla_weight_gradient(inputs, upstream, kernel_shape))


def test_called_on_numpy_arrays_too_and_checks_their_shapes():
    inputs, upstream = _case(*SHAPES[2])
    primitive = jax_onednn.weight_gradient(inputs.shape, SHAPES[2][1])
    _assert_close(primitive(inputs, upstream), _xla_weight_gradient(inputs, upstream, SHAPES[2][1]))
    with pytest.raises(ValueError, match="shapes"):
        primitive(inputs[:3], upstream)


def test_what_onednn_cannot_compute_is_left_to_xla():
    import jax.numpy as jnp

    inputs, upstream = _case(*SHAPES[2])
    # float16 is not what the primitive computes: the caller keeps XLA's gradient (None).
    assert jax_onednn.conv_weight_gradient(jnp.asarray(inputs, "float16"), upstream, SHAPES[2][1]) is None
    # A kernel larger than the image, channels that do not match, an empty batch: no primitive.
    for input_shape, kernel_shape in [((2, 4, 4, 3), (5, 5, 3, 8)), ((2, 8, 8, 3), (3, 3, 4, 8)),
                                      ((0, 8, 8, 3), (3, 3, 3, 8)), ((2, 8, 8), (3, 3, 8))]:
        assert jax_onednn.weight_gradient(input_shape, kernel_shape) is None, (input_shape, kernel_shape)


def test_a_bad_call_is_a_jax_error_not_a_crash():
    import jax

    jax_onednn._registered()
    bad = jax.ffi.ffi_call(jax_onednn.TARGET, jax.ShapeDtypeStruct((3, 3, 32), np.float32))
    with pytest.raises(Exception, match="float32 operands of rank 4 only") as raised:
        jax.block_until_ready(jax.jit(bad)(np.zeros((2, 26, 26, 32), "float32"), np.zeros((2, 24, 24, 32), "float32")))
    assert type(raised.value).__name__ == "JaxRuntimeError"


def test_library_is_the_installed_distributions_own():
    path = jax_onednn.library_path()
    assert path.name.startswith("libdnnl.so.3") and path.is_file()
