"""The network as plain arrays and numbers, for the references written without Keras.

The raw JAX and raw TensorFlow references re-implement the project's model
(``mnist_multibackend.model``) layer for layer:

    4 x [3x3 VALID conv + bias -> batch norm -> ReLU], a 2x2 max pool after the
    2nd and the 4th; dropout; flatten; dense 256 + ReLU; dropout; dense 10 (softmax
    cross-entropy); Adam.

Their weights and hyperparameters are read from a built Keras model, so the
shapes, the initial values and the optimizer settings are the model's own.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CONVS = ("conv0", "conv1", "conv2", "conv3")
NORMS = ("bn0", "bn1", "bn2", "bn3")
POOL_AFTER = ("conv1", "conv3")  # the model's MP1 and MP2
DENSES = ("fc1", "fco")


@dataclasses.dataclass(frozen=True)
class CoreSpec:
    """Weights as ``{"conv0/kernel": array, ...}`` (Keras layouts: HWIO kernels, (in, out) dense) and settings."""

    trainable: dict[str, np.ndarray]  # kernels, biases, batch-norm gamma and beta
    moving: dict[str, np.ndarray]  # batch-norm moving_mean and moving_variance
    bn_epsilon: float
    bn_momentum: float
    dropout_rates: tuple[float, float]  # after MP2, after fc1
    learning_rate: float
    beta_1: float
    beta_2: float
    adam_epsilon: float


def spec_from_keras(model) -> CoreSpec:
    """The weights and settings of a built, compiled project model (``build_model`` + ``compile_model``)."""
    trainable, moving = {}, {}
    for name in CONVS + DENSES:
        kernel, bias = model.get_layer(name).get_weights()
        trainable[f"{name}/kernel"], trainable[f"{name}/bias"] = kernel, bias
    for name in NORMS:
        gamma, beta, mean, variance = model.get_layer(name).get_weights()
        trainable[f"{name}/gamma"], trainable[f"{name}/beta"] = gamma, beta
        moving[f"{name}/moving_mean"], moving[f"{name}/moving_variance"] = mean, variance
    bn = model.get_layer(NORMS[0])
    optimizer = model.optimizer
    return CoreSpec(
        trainable=trainable, moving=moving, bn_epsilon=float(bn.epsilon), bn_momentum=float(bn.momentum),
        dropout_rates=(float(model.get_layer("dropout_1").rate), float(model.get_layer("dropout_2").rate)),
        learning_rate=float(np.asarray(optimizer.learning_rate)), beta_1=float(optimizer.beta_1),
        beta_2=float(optimizer.beta_2), adam_epsilon=float(optimizer.epsilon),
    )


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, steps: int):
    """The first ``steps`` whole batches of ``(x, y)`` as a list of pairs."""
    return [(x[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size]) for i in range(steps)]
