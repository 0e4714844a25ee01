"""The same math in forms that XLA's CPU backend runs faster: applied to a built model on JAX/CPU.

Import this module only after ``runtime.start()`` has chosen the backend.

A training step of the model on JAX/CPU spends most of its time in a few XLA
kernels whose speed depends on the shape and formulation, not on the arithmetic
(``python -m benchmarks.profile_jax``; figures in ``benchmarks/results/jax-cpu-gap.md``):

- ``conv1`` (26x26, 32 -> 32 channels, VALID): its forward pass and weight
  gradient took about 40 % of the step. The same convolution computed with
  SAME padding and cropped by one pixel on each side gives the same outputs,
  and XLA runs it, and its weight gradient, several times faster. For
  ``conv0``, ``conv2`` and ``conv3`` this form was measured no faster, so they
  keep the plain one.
- every convolution as one matrix product of the input's 3x3 patches
  (im2col) and the kernel, since XLA:CPU's matmul runs near the CPU's peak
  while its convolutions do not; its gradients are matmuls too. It beat the
  SAME form above on both CPU kinds measured (AVX2, AVX-512). Which form each
  CPU kind gets is ``conv_forms``'s choice. Where ``xla_cpu_flags`` has taken
  XLA's convolutions off YNNPACK's single-convolution path (which ran them on
  one thread), XLA's own convolutions are faster still, and they are kept.
- a convolution's weight gradient, with XLA's own convolutions: one XLA
  convolution sums over the whole batch, after XLA copies the layer's input and
  upstream gradient into layouts with the batch innermost. The same gradient
  summed over slices of 32 images made the training step 1.06-1.10x faster at
  batch 128 and 1.26x at 512; the copies account for part of it (bn0's output
  into conv1's layout: 32 ms whole, 20 ms in slices, at batch 512), the
  convolutions themselves for the rest. The forward pass and the input gradient
  stay Keras's.
- better still, the convolutions computed by oneDNN, the library behind
  TensorFlow's CPU kernels, as XLA custom calls (``jax_onednn``), all three
  passes: conv1's weight gradient took 6.7 ms against 14.6 ms sliced, and the
  training step ran 1.11x (batch 128) and 1.16x (512) faster than with the
  slices with oneDNN's weight gradients alone, 1.17-1.29x and 1.35x with all
  three passes. Where oneDNN is not installed or cannot compute a shape, XLA's
  pass (and the slices) stay.
- the max pools' gradient: JAX differentiates a max pool into
  ``select_and_scatter``, which XLA:CPU expands into a reduce-window over four
  index arrays and a scatter (about 20 % of the step). For non-overlapping
  windows the same gradient is a mask: each window's upstream gradient goes to
  the first of its elements, in row-major order, that equals the window's
  maximum (``select_and_scatter``'s choice under ties), and zero elsewhere.
- batch norm in training: JAX differentiates Keras's form (the mean, the
  variance, then the normalisation) into several passes over the activations,
  which at batch 128 are 9-11 MB each, beyond the caches of some CPUs. The
  same gradient written out (``batch_norm_training``) reads the layer's input
  and upstream gradient once for the two per-channel sums and once more for
  the input gradient, as TensorFlow's fused kernel does.

Only the layers' computations are rebound, on the layer instances: their
classes, configs, weights and saved files stay those of a plain ``Conv2D``,
``MaxPooling2D`` and ``BatchNormalization``, so a saved model loads anywhere as the original.

``training.train`` applies them to the model it trains; models built or loaded
for prediction keep Keras's own computations: in a forward pass alone XLA
compiles conv1's SAME form differently, and prediction ran 4x slower with it
(batch 512: 4,959 against 21,204 images/s; the pools' form made no difference).
"""

from __future__ import annotations

import functools

import keras

from .batch_norm_step import plain_batch_norm, training_call

CONVS = ("conv0", "conv1", "conv2", "conv3")
SLICED_CONVS = ("conv1", "conv2", "conv3")  # conv0 (one input channel) measured no faster sliced
ONEDNN_CONVS = ("conv0", "conv1", "conv2", "conv3")  # all four, all three passes
# Images per slice of a sliced weight gradient: 16 and 32 measured alike at batch 128; 64 and 128 gained less.
WEIGHT_GRADIENT_SLICE = 32


def conv_forms(features: list[str], xla_convolutions_fast: bool = False,
               onednn: bool = False) -> dict[str, tuple[str, ...]]:
    """Which convolutions run in which form on a CPU with ``features`` (``runtime.cpu_features``):
    each CPU kind gets what was measured fastest on it (docs/performance.md, "Choices per CPU").

    ``xla_convolutions_fast``: XLA compiles convolutions off YNNPACK's single-convolution path
    (``xla_cpu_flags.in_force()``). Then XLA's own convolutions are the fastest form: a training step of
    72 ms against 98-99 ms with the matmul forms, in the same process, on AVX-512
    (``python -m benchmarks.jax_cpu_remedies``). Otherwise both CPU kinds measured chose the same: all four
    convolutions as one matmul each. On AVX2 + FMA it ran 1.1-1.3x the step of conv1 as SAME + crop; on
    AVX-512 (with BF16, no AMX) 1.25x (121 against 152 ms per step, faster in each of 10 interleaved rounds),
    once malloc kept freed memory. CPUs not measured (AMX, ARM) get the same.

    With XLA's own convolutions, conv1-conv3 also get their weight gradients summed over slices of
    ``WEIGHT_GRADIENT_SLICE`` images: 1.06-1.10x the step at batch 128 and 1.26x at 512 (AVX-512, one
    process, alternating windows). The matmul forms' weight gradients are matmuls already.

    ``onednn``: oneDNN loads here (``jax_onednn.available()``). On a CPU with AVX2, all four
    convolutions are then oneDNN's, each pass (``jax_onednn``), whichever XLA setting is in force. On
    AVX-512, at batch 128: 53.6 ms per step against 62.9 with oneDNN's weight gradients alone and 73-76 with
    the slices (``benchmarks.jax_cpu_remedies``, one process, alternating windows). On AVX2 the
    JAX step was not measured with it; what was measured there is that the same oneDNN kernels made
    TensorFlow's whole step 2.2-2.4x faster than Eigen's (``runtime.tensorflow_cpu_settings``), and XLA's
    convolutions are Eigen's: ``benchmarks.jax_cpu_remedies``' "pool mask + oneDNN convolutions" is the
    variant to check it with. Older x86 and other architectures keep the forms above.
    """
    fields = {"same_padded_convs": (), "matmul_convs": (), "sliced_weight_gradient_convs": (),
              "onednn_convs": ()}
    if onednn and "avx2" in features:
        return {**fields, "onednn_convs": ONEDNN_CONVS}
    if xla_convolutions_fast:
        return {**fields, "sliced_weight_gradient_convs": SLICED_CONVS}
    return {**fields, "matmul_convs": CONVS}


def chosen_conv_forms() -> dict[str, tuple[str, ...]]:
    """``conv_forms`` for this process: this CPU's features, and whether ``xla_cpu_flags`` is in force."""
    from .jax_onednn import available
    from .runtime import cpu_features
    from .xla_cpu_flags import in_force

    return conv_forms(cpu_features(), in_force(), available())


def speed_up(model: keras.Model, same_padded_convs: tuple[str, ...] | None = None,
             mask_pool_gradient: bool = True, matmul_convs: tuple[str, ...] | None = None,
             sliced_weight_gradient_convs: tuple[str, ...] | None = None,
             onednn_convs: tuple[str, ...] | None = None, batch_norm: bool = True) -> list[str]:
    """Rebind the computations of ``model``'s layers that have a faster form on JAX/CPU; returns their names.

    By default the convolutions' forms are this process's (``chosen_conv_forms``);
    ``benchmarks.jax_cpu_remedies`` passes others to compare them. Does nothing (returns ``[]``) on another
    backend or device: the figures behind these choices are XLA:CPU's.
    """
    if keras.backend.backend() != "jax":
        return []
    import jax

    device = jax.config.jax_default_device  # runtime.start(device="cpu") sets it on a machine with a GPU
    if getattr(device, "platform", device or jax.default_backend()) != "cpu":
        return []
    chosen = chosen_conv_forms()
    same_padded_convs = chosen["same_padded_convs"] if same_padded_convs is None else same_padded_convs
    matmul_convs = chosen["matmul_convs"] if matmul_convs is None else matmul_convs
    if sliced_weight_gradient_convs is None:
        sliced_weight_gradient_convs = chosen["sliced_weight_gradient_convs"]
    if onednn_convs is None:
        onednn_convs = chosen["onednn_convs"]
    changed = []
    for layer in model.layers:
        if layer.name in onednn_convs and _plain_odd_conv(layer):
            layer.convolution_op = conv_by_onednn
            changed.append(layer.name)
        elif layer.name in matmul_convs and _plain_odd_conv(layer):
            layer.convolution_op = conv_as_one_matmul
            changed.append(layer.name)
        elif layer.name in same_padded_convs and _plain_odd_conv(layer):
            layer.convolution_op = functools.partial(_same_padded_then_cropped, layer)
            changed.append(layer.name)
        elif layer.name in sliced_weight_gradient_convs and _plain_odd_conv(layer):
            layer.convolution_op = conv_with_sliced_weight_gradient
            changed.append(layer.name)
        elif mask_pool_gradient and _non_overlapping_max_pool(layer):
            layer.call = max_pool_with_mask_gradient(tuple(layer.pool_size))
            changed.append(layer.name)
        elif batch_norm and _plain_batch_norm(layer):
            layer.call = batch_norm_call(layer)
            changed.append(layer.name)
    return changed


def _plain_odd_conv(layer) -> bool:
    """A 2-D, stride-1, undilated, ungrouped VALID convolution with an odd kernel, channels last."""
    return (isinstance(layer, keras.layers.Conv2D) and type(layer).convolution_op is keras.layers.Conv2D.convolution_op
            and layer.padding == "valid" and layer.data_format == "channels_last"
            and tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1
            and all(k % 2 == 1 for k in layer.kernel_size))


def _same_padded_then_cropped(layer, inputs, kernel):
    """``layer``'s VALID convolution of ``inputs`` as a SAME convolution cropped by half the kernel."""
    outputs = keras.ops.conv(inputs, kernel, strides=1, padding="same", data_format="channels_last")
    crop_h, crop_w = layer.kernel_size[0] // 2, layer.kernel_size[1] // 2
    return outputs[:, crop_h:outputs.shape[1] - crop_h, crop_w:outputs.shape[2] - crop_w, :]


def conv_as_one_matmul(inputs, kernel):
    """The VALID, stride-1 convolution of ``inputs`` (n, h, w, c) by ``kernel`` (kh, kw, c, f) as one matrix
    product of the input's patches (im2col) and the kernel: XLA:CPU's matmul is faster than its convolutions."""
    import jax
    import jax.numpy as jnp

    kh, kw, channels = kernel.shape[:3]
    height, width = inputs.shape[1:3]
    oh, ow = height - kh + 1, width - kw + 1
    # Computed once: XLA would otherwise fuse the producer (batch norm, ReLU) into each of the slices.
    inputs = jax.lax.optimization_barrier(inputs)
    # Patch features in the kernel's (row, column, channel) order, so the kernel is only reshaped.
    patches = jnp.concatenate([inputs[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)], axis=-1)
    outputs = jnp.dot(patches.reshape(-1, kh * kw * channels), keras.ops.reshape(kernel, (kh * kw * channels, -1)))
    return outputs.reshape(-1, oh, ow, kernel.shape[-1])


def conv_with_sliced_weight_gradient(inputs, kernel, slice_size: int = WEIGHT_GRADIENT_SLICE):
    """Keras's VALID, stride-1 convolution of ``inputs`` (n, h, w, c) by ``kernel`` (kh, kw, c, f), whose
    kernel gradient is the sum of XLA's over slices of ``slice_size`` images (module docstring).

    Under a ``keras.distribution`` the batch is sharded across devices, and slices would cut across the
    shards: there the whole-batch gradient is kept.
    """
    return _sliced_weight_gradient_conv(slice_size)(keras.ops.convert_to_tensor(inputs),
                                                    keras.ops.convert_to_tensor(kernel))


def conv_by_onednn(inputs, kernel):
    """Keras's VALID, stride-1 convolution of ``inputs`` (n, h, w, c) by ``kernel`` (kh, kw, c, f), each of
    its passes by oneDNN (``jax_onednn``): XLA's for a pass that oneDNN cannot compute (the slices for the
    weight gradient), and all of XLA's under a ``keras.distribution`` (the custom calls do not know the
    shards)."""
    return _onednn_conv()(keras.ops.convert_to_tensor(inputs), keras.ops.convert_to_tensor(kernel))


def valid_conv(inputs, kernel):
    """What ``keras.ops.conv`` computes for a VALID, stride-1, channels-last layer, in ``jax.lax``: the
    convolution that this module's custom gradients (and the studies in ``benchmarks``) differentiate."""
    import jax

    return jax.lax.conv_general_dilated(inputs, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.cache
def _sliced_weight_gradient_conv(slice_size: int):
    import jax

    def forward(inputs, kernel):
        return valid_conv(inputs, kernel), (inputs, kernel)

    def backward(residuals, grad):
        inputs, kernel = residuals
        _, input_vjp = jax.vjp(lambda x: valid_conv(x, kernel), inputs)
        size = slice_size if keras.distribution.distribution() is None else len(inputs)
        kernel_grad = None
        for start in range(0, len(inputs), size):
            _, kernel_vjp = jax.vjp(lambda k, x=inputs[start:start + size]: valid_conv(x, k), kernel)
            part = kernel_vjp(grad[start:start + size])[0]
            kernel_grad = part if kernel_grad is None else kernel_grad + part
        return input_vjp(grad)[0], kernel_grad

    sliced = jax.custom_vjp(valid_conv)
    sliced.defvjp(forward, backward)
    return sliced


def _non_overlapping_max_pool(layer) -> bool:
    """A 2-D VALID max pool, channels last, whose windows do not overlap (strides = pool size)."""
    return (isinstance(layer, keras.layers.MaxPooling2D) and layer.padding == "valid"
            and layer.data_format == "channels_last" and tuple(layer.strides) == tuple(layer.pool_size))


def max_pool_with_mask_gradient(pool_size: tuple[int, int]):
    """A max pool over ``pool_size`` windows (float ``(n, h, w, c)`` -> ``(n, h / ph, w / pw, c)``)
    whose gradient is the first-maximum mask described in the module's docstring, when the windows
    tile the input exactly; otherwise Keras's own."""
    import jax
    import jax.numpy as jnp

    ph, pw = pool_size

    def pool(x):
        return keras.ops.max_pool(x, pool_size, strides=pool_size, padding="valid", data_format="channels_last")

    def forward(x):
        y = pool(x)
        return y, (x, y)

    def backward(residuals, grad):
        x, y = residuals
        n, h, w, c = x.shape
        windows = x.reshape(n, h // ph, ph, w // pw, pw, c)
        taken = jnp.zeros(y.shape, bool)
        rows = []
        for i in range(ph):
            row = []
            for j in range(pw):
                first = (windows[:, :, i, :, j, :] == y) & ~taken
                taken = taken | first
                row.append(jnp.where(first, grad, jnp.zeros_like(grad)))
            rows.append(jnp.stack(row, axis=3))  # (n, h / ph, w / pw, pw, c)
        return (jnp.stack(rows, axis=2).reshape(n, h, w, c),)  # via (n, h / ph, ph, w / pw, pw, c)

    max_pool = jax.custom_vjp(pool)
    max_pool.defvjp(forward, backward)

    def call(inputs):  # the layer's call: Keras may pass the input by keyword
        height, width = inputs.shape[1:3]
        if height is None or width is None or height % ph or width % pw:  # unknown, or a remainder VALID drops
            return pool(inputs)
        return max_pool(inputs)

    return call


@functools.cache
def _onednn_conv():
    import jax

    from . import jax_onednn

    def distributed() -> bool:
        return keras.distribution.distribution() is not None

    def convolution(inputs, kernel):
        outputs = None if distributed() else jax_onednn.conv(inputs, kernel)
        return valid_conv(inputs, kernel) if outputs is None else outputs

    def forward(inputs, kernel):
        return convolution(inputs, kernel), (inputs, kernel)

    def backward(residuals, grad):
        inputs, kernel = residuals
        if distributed():
            return jax.vjp(valid_conv, inputs, kernel)[1](grad)
        input_grad = jax_onednn.conv_input_gradient(grad, kernel, inputs.shape)
        if input_grad is None:
            input_grad = jax.vjp(lambda x: valid_conv(x, kernel), inputs)[1](grad)[0]
        kernel_grad = jax_onednn.conv_weight_gradient(inputs, grad, kernel.shape)
        if kernel_grad is None:
            kernel_grad = jax.vjp(_sliced_weight_gradient_conv(WEIGHT_GRADIENT_SLICE), inputs, kernel)[1](grad)[1]
        return input_grad, kernel_grad

    conv = jax.custom_vjp(convolution)
    conv.defvjp(forward, backward)
    return conv


def _plain_batch_norm(layer) -> bool:
    """A plain ``BatchNormalization`` (``batch_norm_step``) with float weights: ``batch_norm_training`` computes it
    as Keras does (the axis is checked per call)."""
    return (plain_batch_norm(layer) and layer.variable_dtype in ("float32", "float64")
            and layer.compute_dtype in ("float32", "bfloat16", "float16"))


def batch_norm_call(layer):
    """``layer.call`` with its training step in ``batch_norm_training``; otherwise (inference, a mask, a frozen
    layer, channels not last) Keras's own."""
    return training_call(layer, batch_norm_training, lambda inputs: layer.axis in (-1, len(inputs.shape) - 1))


def batch_norm_training(x, gamma, beta, epsilon: float):
    """Batch norm of channels-last ``x`` over all but its last axis: ``(outputs, mean, variance)``, computed as
    Keras computes them (the variance without Bessel's correction), with the gradient written out."""
    return _batch_norm_training()(x, gamma, beta, epsilon)


@functools.cache
def _batch_norm_training():
    import jax
    import jax.numpy as jnp

    def statistics(x):
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axes)
        return mean, jnp.mean(jnp.square(x - mean), axes)  # jnp.var's two passes, as Keras's moments

    def batch_norm(x, gamma, beta, epsilon):
        mean, variance = statistics(x)
        inv = jax.lax.rsqrt(variance + epsilon) * gamma  # ops.batch_normalization's order of operations
        return x * inv + (beta - mean * inv), mean, variance

    def forward(x, gamma, beta, epsilon):
        outputs, mean, variance = batch_norm(x, gamma, beta, epsilon)
        return (outputs, mean, variance), (x, mean, jax.lax.rsqrt(variance + epsilon), gamma)

    def backward(epsilon, residuals, cotangents):
        # With xhat = (x - mean) * inv_std over N values per channel: d beta = sum(g), d gamma = sum(g * xhat),
        # and d x = gamma * inv_std * (g - (d beta + xhat * d gamma) / N), plus what reaches x through the mean
        # and variance returned (1 / N and 2 (x - mean) / N; zero when only the moving statistics use them).
        x, mean, inv_std, gamma = residuals
        grad, grad_mean, grad_variance = cotangents
        axes = tuple(range(x.ndim - 1))
        count = x.size // x.shape[-1]
        centered = x - mean
        grad_beta = jnp.sum(grad, axes)
        grad_gamma = jnp.sum(grad * centered, axes) * inv_std
        scale = gamma * inv_std
        per_centered = (2.0 * grad_variance - scale * inv_std * grad_gamma) / count
        constant = (grad_mean - scale * grad_beta) / count
        grad_x = grad * scale + centered * per_centered + constant
        return grad_x.astype(x.dtype), grad_gamma.astype(gamma.dtype), grad_beta.astype(gamma.dtype)

    with_gradient = jax.custom_vjp(batch_norm, nondiff_argnums=(3,))
    with_gradient.defvjp(forward, backward)
    return with_gradient
