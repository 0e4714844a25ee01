"""A ``BatchNormalization``'s training step in a backend's own form: what ``tf_cpu``
(TensorFlow's fused kernel) and ``jax_cpu`` (the gradient written out) share.

Import this module only after ``runtime.start()`` has chosen the backend.

Both rebind ``call`` on the layer instance, in training only: the batch's
statistics in float32 at least, as Keras computes them, and the moving
statistics updated as Keras updates them. Inference, a mask, a frozen layer, and
inputs the backend's form does not take keep Keras's own computation.
"""

from __future__ import annotations

import keras


def plain_batch_norm(layer) -> bool:
    """A ``BatchNormalization`` that trains as Keras's own: its own ``call``, per-replica statistics (not
    synchronized), no renormalisation, a learned scale and offset. Each backend's form adds its own limits."""
    return (isinstance(layer, keras.layers.BatchNormalization)
            and type(layer).call is keras.layers.BatchNormalization.call
            and not layer.synchronized and not layer.renorm and layer.center and layer.scale)


def training_call(layer, batch_norm_training, takes):
    """``layer.call`` with its training step in ``batch_norm_training(x, gamma, beta, epsilon)``, which returns
    ``(outputs, mean, variance)`` (the batch variance without Bessel's correction), for inputs that
    ``takes(inputs)``; otherwise Keras's own."""
    keras_call = layer.call

    def call(inputs, training=None, mask=None):
        if not (training and layer.trainable) or mask is not None or not takes(inputs):
            return keras_call(inputs, training=training, mask=mask)
        dtype = keras.backend.result_type(inputs.dtype, "float32")  # as Keras: statistics in float32 at least
        outputs, mean, variance = batch_norm_training(
            keras.ops.cast(inputs, dtype), keras.ops.cast(layer.gamma, dtype), keras.ops.cast(layer.beta, dtype),
            layer.epsilon)
        momentum = layer.momentum
        layer.moving_mean.assign(keras.ops.cast(layer.moving_mean, dtype) * momentum + mean * (1.0 - momentum))
        layer.moving_variance.assign(
            keras.ops.cast(layer.moving_variance, dtype) * momentum + variance * (1.0 - momentum))
        return keras.ops.cast(outputs, layer.compute_dtype)

    return call
