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


def matmul_peak(backend: str, windows: int, window_seconds: float, size: int = MATMUL_SIZE) -> dict:
    """``{"gflops", "median_gflops", "size", "matmuls_per_window"}`` for ``size x size`` fp32 matmuls.

    ``gflops`` is the best window: a peak is what the device can do, and on a
    shared machine the least disturbed window comes closest to it (which makes
    every row's percent of peak, if anything, an underestimate).
    """
    run = _jax_matmuls(size) if backend == "jax" else _tensorflow_matmuls(size)
    run(1)  # compile and warm up
    per_matmul = timed(lambda: run(2)) / 2
    count = steps_for(per_matmul, window_seconds, max_steps=1000)
    seconds = [timed(lambda: run(count)) for _ in range(windows)]
    flops = 2 * size**3 * count
    rates = [flops / s / 1e9 for s in seconds]
    return {"gflops": max(rates), "median_gflops": statistics.median(rates), "size": size,
            "matmuls_per_window": count}


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
