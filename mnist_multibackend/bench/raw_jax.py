"""The model's training and inference steps in raw JAX: ``jax.lax`` ops, a hand-written Adam, ``jax.jit``.

A reference with no Keras in the loop, so that Keras's overhead on the JAX
backend shows as a ratio. It computes what the Keras model computes (see
``core``); the worker checks that its predictions match Keras's. Its training
step on a CPU uses the forms that ``mnist-mb train`` runs there
(``mnist_multibackend.jax_cpu.chosen_conv_forms``, and the max pools' gradient
as a mask), and its prediction Keras's own, as ``mnist-mb predict`` does, so
the ratio compares like with like.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mnist_multibackend.jax_cpu import (chosen_conv_forms, conv_as_one_matmul, conv_by_onednn,
                                        conv_with_sliced_weight_gradient,
                                        max_pool_with_mask_gradient)

from .core import CONVS, DENSES, NORMS, POOL_AFTER, CoreSpec

FRAMEWORK = "jax.lax + jax.jit"
_LAYOUT = ("NHWC", "HWIO", "NHWC")  # Keras's channels-last images and (h, w, in, out) kernels


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def _conv(name: str, x, kernel, training: bool):
    """The same forms as the Keras model that train() trains in this process (``jax_cpu.chosen_conv_forms``)."""
    forms = chosen_conv_forms() if training and _on_cpu() else {}
    if name in forms.get("matmul_convs", ()):
        return conv_as_one_matmul(x, kernel)
    if name in forms.get("onednn_convs", ()):
        return conv_by_onednn(x, kernel)
    if name in forms.get("sliced_weight_gradient_convs", ()):
        return conv_with_sliced_weight_gradient(x, kernel)
    if name in forms.get("same_padded_convs", ()):  # 3x3: SAME, then one pixel off each side
        return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_LAYOUT)[:, 1:-1, 1:-1, :]
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_LAYOUT)


def _max_pool(x, training: bool):
    if training and _on_cpu():
        return max_pool_with_mask_gradient((2, 2))(x)
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def forward(spec: CoreSpec, params, moving, x, training: bool, key=None):
    """``x`` float32 ``(n, 28, 28, 1)`` -> ``(logits (n, 10), updated moving statistics)``."""
    new_moving = dict(moving)
    for conv, norm in zip(CONVS, NORMS):
        x = _conv(conv, x, params[f"{conv}/kernel"], training)
        x = x + params[f"{conv}/bias"]
        if training:
            mean, var = jnp.mean(x, axis=(0, 1, 2)), jnp.var(x, axis=(0, 1, 2))
            m = spec.bn_momentum
            new_moving[f"{norm}/moving_mean"] = moving[f"{norm}/moving_mean"] * m + mean * (1 - m)
            new_moving[f"{norm}/moving_variance"] = moving[f"{norm}/moving_variance"] * m + var * (1 - m)
        else:
            mean, var = moving[f"{norm}/moving_mean"], moving[f"{norm}/moving_variance"]
        x = (x - mean) * lax.rsqrt(var + spec.bn_epsilon) * params[f"{norm}/gamma"] + params[f"{norm}/beta"]
        x = jax.nn.relu(x)
        if conv in POOL_AFTER:
            x = _max_pool(x, training)
    keys = jax.random.split(key, 2) if training else (None, None)
    x = _dropout(x, spec.dropout_rates[0], keys[0])
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(x @ params[f"{DENSES[0]}/kernel"] + params[f"{DENSES[0]}/bias"])
    x = _dropout(x, spec.dropout_rates[1], keys[1])
    return x @ params[f"{DENSES[1]}/kernel"] + params[f"{DENSES[1]}/bias"], new_moving


def _dropout(x, rate: float, key):
    if key is None or rate == 0:
        return x
    keep = jax.random.bernoulli(key, 1 - rate, x.shape)
    return jnp.where(keep, x / (1 - rate), 0)


class RawJax:
    """Train and predict on device-resident batches; each call returns once the device is done."""

    framework = FRAMEWORK

    def __init__(self, spec: CoreSpec, jit_compile: bool = True, seed: int = 0):
        del jit_compile  # JAX always compiles; the argument keeps the two references interchangeable
        self.spec = spec
        params = {k: jnp.asarray(v) for k, v in spec.trainable.items()}
        def zeros():  # separate buffers: donation refuses one buffer passed twice
            return {k: jnp.zeros_like(v) for k, v in params.items()}

        self._state = (params, {k: jnp.asarray(v) for k, v in spec.moving.items()}, zeros(), zeros(),
                       jnp.zeros((), jnp.int32), jax.random.PRNGKey(seed))
        # The old state's buffers are reused for the new one, as Keras's JAX trainer does.
        self._train_step = jax.jit(self._step, donate_argnums=0)
        self._predict = jax.jit(lambda params, moving, x: jax.nn.softmax(forward(spec, params, moving, x, False)[0]))

    def _step(self, state, x, y):
        params, moving, m, v, iterations, key = state
        key, step_key = jax.random.split(key)

        def loss(params):
            logits, new_moving = forward(self.spec, params, moving, x, True, step_key)
            return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), axis=-1)), new_moving

        grads, new_moving = jax.grad(loss, has_aux=True)(params)
        s = self.spec
        iterations = iterations + 1
        t = iterations.astype(jnp.float32)
        alpha = s.learning_rate * jnp.sqrt(1 - s.beta_2**t) / (1 - s.beta_1**t)
        m = {k: m[k] + (g - m[k]) * (1 - s.beta_1) for k, g in grads.items()}
        v = {k: v[k] + (g * g - v[k]) * (1 - s.beta_2) for k, g in grads.items()}
        params = {k: p - alpha * m[k] / (jnp.sqrt(v[k]) + s.adam_epsilon) for k, p in params.items()}
        return params, new_moving, m, v, iterations, key

    @staticmethod
    def to_device(pairs):
        """Host ``[(x, y), ...]`` -> the same batches in device memory."""
        return [(jax.device_put(x), jax.device_put(y)) for x, y in pairs]

    def train(self, batches) -> None:
        """One training step per ``(x, y)`` batch; waits for the last (each step needs the previous)."""
        state = self._state
        for x, y in batches:
            state = self._train_step(state, x, y)
        self._state = jax.block_until_ready(state)

    def predict(self, batches) -> list[np.ndarray]:
        """Class probabilities for each ``(x, _)`` batch, copied to the host (as ``model.predict`` returns them)."""
        params, moving = self._state[:2]
        return jax.device_get([self._predict(params, moving, x) for x, _ in batches])
