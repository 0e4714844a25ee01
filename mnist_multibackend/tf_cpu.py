"""Fused batch normalisation for training on TensorFlow/CPU: applied to a built model's layers.

Import this module only after ``runtime.start()`` has chosen the backend.

Keras's ``BatchNormalization`` trains on TensorFlow in separate ops: the batch's
mean, its variance, then the normalisation, each with its own gradient.
TensorFlow's ``FusedBatchNormV3`` computes the same in one oneDNN kernel each
way. In the raw training step it ran 1.09-1.15x Keras's form on an AVX2 host
(``python -m benchmarks.tf_raw_variants``); in ``model.fit`` on an AVX-512 host,
1.18x (medians of 9 windows in alternating processes, ``python -m
benchmarks.tf_cpu_options``; docs/performance.md, "Choices per CPU").

Two differences from Keras's form are taken care of here: the fused kernel
returns the batch variance with Bessel's correction (n / (n - 1)), which Keras
does not put into the moving variance, so it is scaled back; and it needs
epsilon of at least 1.001e-5 (Keras's default is 1e-3).

Only the layers' training computation is rebound, on the layer instances: their
class, config, weights and saved files stay those of a plain
``BatchNormalization``, and inference keeps Keras's own computation.
"""

from __future__ import annotations

import keras

from .batch_norm_step import plain_batch_norm, training_call

# FusedBatchNormV3's own lower bound on epsilon (TensorFlow raises below it).
_FUSED_MIN_EPSILON = 1.001e-5


def speed_up(model: keras.Model) -> list[str]:
    """Rebind the training computation of ``model``'s batch-norm layers to the fused kernel; returns their names.

    Does nothing (returns ``[]``) on another backend or when TensorFlow sees a GPU: the figures behind
    this choice are the CPU's.
    """
    if keras.backend.backend() != "tensorflow":
        return []
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        return []
    changed = []
    for layer in model.layers:
        if _plain_batch_norm(layer):
            layer.call = fused_batch_norm_call(layer)
            changed.append(layer.name)
    return changed


def _plain_batch_norm(layer) -> bool:
    """A plain ``BatchNormalization`` (``batch_norm_step``), channels last, that the fused kernel computes exactly
    as Keras does: float32 weights and statistics (the kernel's), epsilon within its bound, 2-D images (checked
    per call)."""
    return (plain_batch_norm(layer) and layer.epsilon >= _FUSED_MIN_EPSILON and layer.axis in (-1, 3)
            and layer.variable_dtype == "float32" and layer.compute_dtype in ("float32", "bfloat16", "float16"))


def fused_batch_norm_call(layer):
    """``layer.call`` with its training step in ``FusedBatchNormV3``; otherwise (inference, a mask, a frozen
    layer, inputs that are not 2-D images) Keras's own."""
    return training_call(layer, fused_batch_norm_training, lambda inputs: len(inputs.shape) == 4)


def fused_batch_norm_training(x, gamma, beta, epsilon: float):
    """Batch norm of float32 NHWC ``x`` over its batch, in ``FusedBatchNormV3``: ``(outputs, mean, variance)``,
    the variance without Bessel's correction, as Keras computes and keeps it."""
    import tensorflow as tf

    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, gamma, beta, epsilon=epsilon, data_format="NHWC", is_training=True)
    count = tf.cast(tf.size(x) // tf.shape(x)[-1], "float32")  # values per channel
    return outputs, mean, variance * (count - 1.0) / tf.maximum(count, 1.0)
