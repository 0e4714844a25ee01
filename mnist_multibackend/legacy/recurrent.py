"""Keras 2's recurrent layers as Keras 3 builds and runs them: configs and weights.

- ``CuDNNLSTM`` / ``CuDNNGRU`` (Keras 2.0.9 to 2.3, tf.keras 1.x) ran on NVIDIA GPUs only.
  They load as the ``LSTM`` / ``GRU`` that computes the same function
  (sigmoid gates; GRU with ``reset_after=True``), which runs anywhere, and
  their weights are converted as Keras 2 converted them on load
  (tf_keras ``saving/legacy/hdf5_format.py`` ``_convert_rnn_weights``).
- ``GRU`` configs from before Keras 2.1.5 have no ``reset_after``: those GRUs
  applied the reset gate before the recurrent kernel, Keras 3's
  ``reset_after=False`` (Keras 3 defaults to ``True``).
- ``Bidirectional`` wraps either of them: its ``layer`` and
  ``backward_layer`` configs are converted the same way.

This module imports nothing from the project: ``safety`` takes from it the
Keras 2 class names a file may use.
"""

from __future__ import annotations

import numpy as np

# Keras 2 layers Keras 3 lacks, and the Keras 3 layer that computes the same function.
CUDNN_EQUIVALENTS = {"CuDNNLSTM": "LSTM", "CuDNNGRU": "GRU"}
# The cuDNN kernels had the activations fixed (tanh, sigmoid gates) and GRU's reset gate applied after the
# recurrent kernel, with one bias for the input and one for the recurrent kernel.
CUDNN_OPTIONS = {
    "CuDNNLSTM": {"activation": "tanh", "recurrent_activation": "sigmoid"},
    "CuDNNGRU": {"activation": "tanh", "recurrent_activation": "sigmoid", "reset_after": True},
}
GATES = {"LSTM": 4, "GRU": 3}


def keras3_layer(class_name, config: dict) -> tuple:
    """``(class_name, config)`` of a Keras 2 recurrent layer as Keras 3 builds it; other layers unchanged.

    The architecture reader calls it for every layer, those inside ``Bidirectional`` included.
    """
    if class_name in CUDNN_EQUIVALENTS:
        return CUDNN_EQUIVALENTS[class_name], {**config, **CUDNN_OPTIONS[class_name]}
    if class_name == "GRU" and "reset_after" not in config:
        return class_name, {**config, "reset_after": False}
    return class_name, config


def cudnn_shapes(layer) -> list | None:
    """The shapes a ``CuDNNLSTM`` / ``CuDNNGRU`` saved for the weights of ``layer``, if it is their equivalent.

    ``[kernel, recurrent kernel, bias]``: the kernels' shapes are those of
    ``LSTM`` / ``GRU``; the bias is two sets, input and recurrent, of
    ``gates * units`` values. ``None`` when ``layer`` cannot hold cuDNN weights
    (another class, no bias, or a GRU with ``reset_after=False``).
    """
    kind = type(layer).__name__
    if kind not in GATES or not layer.use_bias or (kind == "GRU" and not layer.reset_after):
        return None
    kernel, recurrent_kernel, _ = (tuple(w.shape) for w in layer.weights)
    return [kernel, recurrent_kernel, (2 * GATES[kind] * layer.units,)]


def from_cudnn(layer, kernel: np.ndarray, recurrent_kernel: np.ndarray, bias: np.ndarray) -> list:
    """cuDNN weights (``cudnn_shapes``) as the weights of ``layer`` (its ``LSTM`` / ``GRU`` equivalent).

    Per gate, cuDNN kept the input kernel in Fortran order and the recurrent
    kernel transposed. LSTM's two biases are only ever added, so they become
    their sum; GRU's stay two rows, Keras's ``reset_after`` layout.
    """
    gates = GATES[type(layer).__name__]

    def per_gate(matrix, convert):
        return np.hstack([convert(k) for k in np.hsplit(matrix, gates)])

    kernel = per_gate(kernel, lambda k: k.T.reshape(k.shape, order="F"))
    recurrent_kernel = per_gate(recurrent_kernel, lambda k: k.T)
    bias = bias.reshape(2, -1)
    return [kernel, recurrent_kernel, bias.sum(axis=0) if gates == 4 else bias]
