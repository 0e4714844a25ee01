"""The model's training and inference steps in raw TensorFlow: ``tf.nn`` ops, ``tf.GradientTape``, ``tf.function``.

A reference with no Keras in the loop, so that Keras's overhead on the
TensorFlow backend shows as a ratio. It computes what the Keras model computes
(see ``core``), with XLA on or off as Keras chose for the model on this machine;
the worker checks that its predictions match Keras's. Its training step on a
CPU normalises each batch in ``FusedBatchNormV3``, as ``mnist-mb train`` does
there (``mnist_multibackend.tf_cpu``), so the ratio compares like with like.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mnist_multibackend.tf_cpu import fused_batch_norm_training

from .core import CONVS, DENSES, NORMS, POOL_AFTER, CoreSpec

FRAMEWORK = "tf.nn + tf.GradientTape + tf.function"


class RawTensorFlow:
    """Train and predict on device-resident batches; each call returns once the device is done."""

    framework = FRAMEWORK

    def __init__(self, spec: CoreSpec, jit_compile: bool = False, seed: int = 0):
        self.spec = spec
        self.params = {k: tf.Variable(v, name=k.replace("/", "_")) for k, v in spec.trainable.items()}
        self.moving = {k: tf.Variable(v, trainable=False, name=k.replace("/", "_")) for k, v in spec.moving.items()}
        self.m = {k: tf.Variable(tf.zeros_like(v), trainable=False) for k, v in self.params.items()}
        self.v = {k: tf.Variable(tf.zeros_like(v), trainable=False) for k, v in self.params.items()}
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.seed = seed
        # What tf_cpu.speed_up gives the Keras model that train() trains here: the fused kernel on a CPU only.
        self.fused_batch_norm = not tf.config.list_logical_devices("GPU")
        self._train_step = tf.function(self._step, jit_compile=jit_compile)
        self._predict = tf.function(lambda x: tf.nn.softmax(self._forward(x, training=False)), jit_compile=jit_compile)

    def _forward(self, x, training: bool):
        """``x`` float32 ``(n, 28, 28, 1)`` -> logits ``(n, 10)``; in training, updates the moving statistics."""
        p, s = self.params, self.spec
        for conv, norm in zip(CONVS, NORMS):
            x = tf.nn.bias_add(tf.nn.conv2d(x, p[f"{conv}/kernel"], 1, "VALID"), p[f"{conv}/bias"])
            mean_var, var_var = self.moving[f"{norm}/moving_mean"], self.moving[f"{norm}/moving_variance"]
            gamma, beta = p[f"{norm}/gamma"], p[f"{norm}/beta"]
            if training and self.fused_batch_norm:
                x, mean, var = fused_batch_norm_training(x, gamma, beta, s.bn_epsilon)
            else:
                mean, var = tf.nn.moments(x, axes=[0, 1, 2]) if training else (mean_var, var_var)
                x = tf.nn.batch_normalization(x, mean, var, beta, gamma, s.bn_epsilon)
            if training:
                mean_var.assign(mean_var * s.bn_momentum + mean * (1 - s.bn_momentum))
                var_var.assign(var_var * s.bn_momentum + var * (1 - s.bn_momentum))
            x = tf.nn.relu(x)
            if conv in POOL_AFTER:
                x = tf.nn.max_pool2d(x, 2, 2, "VALID")
        x = self._dropout(x, s.dropout_rates[0], 1, training)
        x = tf.reshape(x, [tf.shape(x)[0], -1])
        x = tf.nn.relu(tf.matmul(x, p[f"{DENSES[0]}/kernel"]) + p[f"{DENSES[0]}/bias"])
        x = self._dropout(x, s.dropout_rates[1], 2, training)
        return tf.matmul(x, p[f"{DENSES[1]}/kernel"]) + p[f"{DENSES[1]}/bias"]

    def _dropout(self, x, rate: float, index: int, training: bool):
        if not training or rate == 0:
            return x
        # Stateless, seeded by the step number: repeatable, and valid under XLA.
        seed = tf.stack([self.iterations * 2 + index, tf.constant(self.seed, tf.int64)])
        return tf.nn.experimental.stateless_dropout(x, rate, seed=seed)

    def _step(self, x, y):
        names = list(self.params)
        with tf.GradientTape() as tape:
            logits = self._forward(x, training=True)
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=logits))
        grads = tape.gradient(loss, [self.params[k] for k in names])
        s = self.spec
        self.iterations.assign_add(1)
        t = tf.cast(self.iterations, tf.float32)
        alpha = s.learning_rate * tf.sqrt(1 - s.beta_2**t) / (1 - s.beta_1**t)
        for name, g in zip(names, grads):
            m, v = self.m[name], self.v[name]
            m.assign_add((g - m) * (1 - s.beta_1))
            v.assign_add((g * g - v) * (1 - s.beta_2))
            self.params[name].assign_sub(alpha * m / (tf.sqrt(v) + s.adam_epsilon))

    @staticmethod
    def to_device(pairs):
        """Host ``[(x, y), ...]`` -> the same batches on the default device (a GPU when one is used)."""
        return [(tf.identity(tf.constant(x)), tf.identity(tf.constant(y))) for x, y in pairs]

    def train(self, batches) -> None:
        """One training step per ``(x, y)`` batch; reading a weight back waits for the last step."""
        for x, y in batches:
            self._train_step(x, y)
        self.params[f"{DENSES[1]}/bias"].numpy()

    def predict(self, batches) -> list[np.ndarray]:
        """Class probabilities for each ``(x, _)`` batch, copied to the host (as ``model.predict`` returns them)."""
        return [probabilities.numpy() for probabilities in [self._predict(x) for x, _ in batches]]
