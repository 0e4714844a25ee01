"""oneDNN's convolutions inside JAX (jax_onednn): XLA's results for each pass, on XLA's buffers, errors as errors."""

import json
import os
import subprocess
import sys

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


def _xla_passes(inputs, kernel, upstream):
    """XLA's forward pass, input gradient and weight gradient of the same convolution."""
    import jax

    from mnist_multibackend.jax_cpu import valid_conv

    outputs, vjp = jax.vjp(valid_conv, inputs, kernel)
    input_grad, kernel_grad = vjp(upstream)
    return {"forward": np.asarray(outputs), "input_gradient": np.asarray(input_grad),
            "weight_gradient": np.asarray(kernel_grad)}


def _assert_close(actual, expected):
    # Float32 sums of up to 86,528 products per element, in another order: a tolerance on the gradient's scale.
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert np.abs(expected).max() > 0


def test_version_is_onednn_3():
    assert jax_onednn.version().startswith("3.")


@pytest.mark.parametrize("input_shape, kernel_shape", SHAPES)
def test_in_a_jax_computation_each_pass_is_xlas(input_shape, kernel_shape):
    import jax

    inputs, upstream = _case(input_shape, kernel_shape)
    kernel = np.random.default_rng(1).normal(size=kernel_shape).astype("float32") / 17
    calls = {"forward": (lambda x, k, g: jax_onednn.conv(x * 1.0, k)),
             "input_gradient": (lambda x, k, g: jax_onednn.conv_input_gradient(g * 1.0, k, x.shape)),
             "weight_gradient": (lambda x, k, g: jax_onednn.conv_weight_gradient(x * 1.0, g, k.shape))}
    expected = _xla_passes(inputs, kernel, upstream)
    for pass_, call in calls.items():
        step = jax.jit(call)
        assert jax_onednn.TARGETS[pass_] in step.lower(inputs, kernel, upstream).as_text()  # oneDNN's, not XLA's
        _assert_close(np.asarray(step(inputs, kernel, upstream)), expected[pass_])


def test_called_on_numpy_arrays_too_and_checks_their_shapes():
    (input_shape, kernel_shape), (inputs, upstream) = SHAPES[2], _case(*SHAPES[2])
    kernel = np.random.default_rng(1).normal(size=kernel_shape).astype("float32")
    expected = _xla_passes(inputs, kernel, upstream)
    for pass_, operands in (("forward", (inputs, kernel)), ("input_gradient", (upstream, kernel)),
                            ("weight_gradient", (inputs, upstream))):
        primitive = jax_onednn.convolution(pass_, input_shape, kernel_shape)
        _assert_close(primitive(*operands), expected[pass_])
        with pytest.raises(ValueError, match="shapes"):
            primitive(operands[0][:3], operands[1])


def test_what_onednn_cannot_compute_is_left_to_xla():
    import jax.numpy as jnp

    (input_shape, kernel_shape), (inputs, upstream) = SHAPES[2], _case(*SHAPES[2])
    # float16 is not what the primitives compute: the caller keeps XLA's pass (None).
    assert jax_onednn.conv_weight_gradient(jnp.asarray(inputs, "float16"), upstream, kernel_shape) is None
    assert jax_onednn.conv(jnp.asarray(inputs, "float16"), jnp.zeros(kernel_shape, "float16")) is None
    # A kernel larger than the image, channels that do not match, an empty batch, not 2-D: no primitive.
    for input_shape, kernel_shape in [((2, 4, 4, 3), (5, 5, 3, 8)), ((2, 8, 8, 3), (3, 3, 4, 8)),
                                      ((0, 8, 8, 3), (3, 3, 3, 8)), ((2, 8, 8), (3, 3, 8))]:
        for pass_ in jax_onednn.PASSES:
            assert jax_onednn.convolution(pass_, input_shape, kernel_shape) is None, (pass_, input_shape)


def test_a_bad_call_is_a_jax_error_not_a_crash():
    import jax

    jax_onednn._registered()
    wrong_rank = jax.ffi.ffi_call(jax_onednn.TARGETS["weight_gradient"], jax.ShapeDtypeStruct((3, 3, 32), np.float32))
    with pytest.raises(Exception, match="float32 operands of rank 4 only") as raised:
        jax.block_until_ready(jax.jit(wrong_rank)(np.zeros((2, 26, 26, 32), "float32"),
                                                  np.zeros((2, 24, 24, 32), "float32")))
    assert isinstance(raised.value, jax.errors.JaxRuntimeError)  # (XlaRuntimeError by name before JAX 0.7)
    # Shapes that do not make one convolution (the upstream gradient of another image size).
    mismatched = jax.ffi.ffi_call(jax_onednn.TARGETS["weight_gradient"], jax.ShapeDtypeStruct((3, 3, 32, 32), np.float32))
    with pytest.raises(Exception, match="oneDNN cannot compute"):
        jax.block_until_ready(jax.jit(mismatched)(np.zeros((2, 26, 26, 32), "float32"),
                                                  np.zeros((2, 20, 20, 32), "float32")))


def test_library_is_the_installed_distributions_own():
    path = jax_onednn.library_path()
    assert path.name.startswith("libdnnl.so.3") and path.is_file()


def test_a_missing_distribution_is_no_library(monkeypatch):
    # Another distribution name, as on a machine without the wheel: no path is guessed from anywhere else.
    monkeypatch.setattr(jax_onednn, "DISTRIBUTION", "onednn-cpu-gomp-not-installed")
    assert jax_onednn.library_path() is None


# oneDNN picks its kernels by the CPU; ONEDNN_MAX_CPU_ISA (read once, when the library loads) makes this CPU pick
# another CPU's: gemm-based passes on an SSE4.1 or AVX CPU, jit and brgemm ones on AVX2 or AVX-512. Each needs its
# own process. A child checks every pass inside jax.jit (XLA runs it on its own threads, not the one that made the
# primitive) against XLA's, and reports which kernels ran.
_UNDER_A_CAP = """
import json, sys
import numpy as np
import jax
sys.path.insert(0, sys.argv[1])
from test_jax_onednn import SHAPES, _case, _xla_passes
from mnist_multibackend import jax_onednn

kernels, errors = set(), {}
# conv0 and conv1 at a batch of 16, a 5x5 kernel, a 1x3 kernel on a non-square image
cases = [((16, 28, 28, 1), (3, 3, 1, 32)), ((16, 26, 26, 32), (3, 3, 32, 32)), SHAPES[6], SHAPES[7]]
for input_shape, kernel_shape in cases:
    inputs, upstream = _case(input_shape, kernel_shape)
    kernel = np.random.default_rng(1).normal(size=kernel_shape).astype("float32") / 17
    expected = _xla_passes(inputs, kernel, upstream)
    calls = {"forward": lambda x, k, g: jax_onednn.conv(x * 1.0, k),
             "input_gradient": lambda x, k, g: jax_onednn.conv_input_gradient(g * 1.0, k, x.shape),
             "weight_gradient": lambda x, k, g: jax_onednn.conv_weight_gradient(x * 1.0, g, k.shape)}
    for pass_, call in calls.items():
        actual = np.asarray(jax.jit(call)(inputs, kernel, upstream))
        scale = np.abs(expected[pass_]).max()
        errors[f"{pass_} {input_shape} {kernel_shape}"] = float(np.abs(actual - expected[pass_]).max() / scale)
        kernels.add(jax_onednn.convolution(pass_, tuple(input_shape), tuple(kernel_shape)).implementation)
print(json.dumps({"kernels": sorted(kernels), "errors": errors}))
"""

# What each cap must show in the kernels' names: that the cap took effect.
_CAPS = {"SSE41": ("gemm", "avx"), "AVX": ("gemm", "avx2"), "AVX2": ("avx2", "avx512"),
         "AVX512_CORE": ("avx512", "amx")}


@pytest.mark.parametrize("cap", list(_CAPS))
def test_every_pass_on_the_kernels_of_other_cpus(cap):
    from mnist_multibackend.runtime import cpu_features

    if cap == "AVX512_CORE" and "avx512f" not in cpu_features():
        pytest.skip("this CPU has no AVX-512 kernels to pick")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": cap, "JAX_PLATFORMS": "cpu"}
    child = subprocess.run([sys.executable, "-c", _UNDER_A_CAP, os.path.dirname(__file__)], capture_output=True,
                           text=True, env=env, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.splitlines()[-1])
    bad = {case: error for case, error in report["errors"].items() if not error < 1e-5}
    assert not bad, (cap, report["kernels"], bad)
    named, not_named = _CAPS[cap]
    assert any(named in kernel for kernel in report["kernels"]), report["kernels"]
    assert not any(not_named in kernel for kernel in report["kernels"]), report["kernels"]

