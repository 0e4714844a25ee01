"""The device's dense fp32 matmul rate, measured with the backend's own ops: the "peak" of each row.

A large square matmul is the best case for any BLAS or GPU library, so what it
reaches is a fair practical ceiling for the model's convolutions and dense
layers. On a GPU both backends may use TensorFloat-32 for fp32 matmuls and
convolutions by default; the peak is measured with the same defaults as the
model, so the two stay comparable.
"""

from __future__ import annotations

import statistics

from .timing import steps_for, timed

MATMUL_SIZE = 2048  # 17.2 GFLOP per product: long enough to hide dispatch, small enough for any device


class MatmulPeak:
    """Windows of chained ``size x size`` fp32 matmuls, sampled now and again through a run.

    The peak is the best window: a peak is what the device can do, and on a
    shared machine the least disturbed window comes closest to it. Sampling
    between the other measurements, not only once at the start, keeps one busy
    moment from setting the yardstick (and a high peak makes every row's
    percent of peak, if anything, an underestimate).
    """

    def __init__(self, backend: str, window_seconds: float, size: int = MATMUL_SIZE):
        self.size = size
        self._run = _jax_matmuls(size) if backend == "jax" else _tensorflow_matmuls(size)
        self._run(1)  # compile and warm up
        self.matmuls_per_window = steps_for(timed(lambda: self._run(2)) / 2, window_seconds, max_steps=1000)
        self.rates: list[float] = []  # GFLOP/s of each window

    def sample(self, windows: int) -> None:
        for _ in range(windows):
            seconds = timed(lambda: self._run(self.matmuls_per_window))
            self.rates.append(2 * self.size**3 * self.matmuls_per_window / seconds / 1e9)

    def summary(self) -> dict:
        """``{"gflops": best window, "median_gflops", "size", "matmuls_per_window", "windows"}``."""
        return {"gflops": max(self.rates), "median_gflops": statistics.median(self.rates), "size": self.size,
                "matmuls_per_window": self.matmuls_per_window, "windows": len(self.rates)}


def _jax_matmuls(size: int):
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    c0 = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
    step = jax.jit(lambda a, c: (a @ c) * _scale(size))

    def run(count: int) -> None:
        c = c0
        for _ in range(count):
            c = step(a, c)
        jax.block_until_ready(c)  # each product needs the previous one: the last waits for all

    return run


def _tensorflow_matmuls(size: int):
    import tensorflow as tf

    a = tf.random.normal((size, size), seed=0)
    c0 = tf.random.normal((size, size), seed=1)
    step = tf.function(lambda a, c: tf.linalg.matmul(a, c) * _scale(size))

    def run(count: int) -> None:
        c = c0
        for _ in range(count):
            c = step(a, c)
        c[0, 0].numpy()  # each product needs the previous one: the last waits for all

    return run


def _scale(size: int) -> float:
    # A chain of products of standard-normal matrices grows by about sqrt(size) per product;
    # rescaling keeps the values finite (inf/NaN arithmetic could run at a different speed).
    return size ** -0.5
