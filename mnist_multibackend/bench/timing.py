"""Steady-state timing on a shared machine: probes, then interleaved windows, medians.

Each contender (say Keras and the raw reference, for one batch size and mode)
is a ``run(steps) -> seconds`` callable that runs ``steps`` batches and waits
for the device before it returns (JAX, and TensorFlow on a GPU, return before
the work is done), so the clock covers the work and not its dispatch.

The contenders' windows alternate, round by round: when other programs load
the machine for a while, they slow both alike, and the ratio between the two
stays meaningful even when the absolute figures move.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Callable

PROBE_STEPS = 2


@dataclasses.dataclass
class Measurement:
    """Images per second (the median window), and what stands behind that figure."""

    images_per_second: float
    # The first probe's extra time over steady steps: tracing and compilation. As measured: on a busy
    # machine a small compile can come out below zero, and a floor at zero would hide that.
    compile_seconds: float
    steps_per_window: int
    window_images_per_second: list[float]  # the timed windows, in round order
    cpu_share: float  # this process's CPU time / (wall time x cores) during its windows
    load_average_1min: float  # read as the measurement began


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of ``fn()``; ``fn`` must wait for the device itself."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def steps_for(step_seconds: float, window_seconds: float, max_steps: int) -> int:
    """How many steps fill a window of about ``window_seconds``, between 1 and ``max_steps``."""
    return max(1, min(max_steps, round(window_seconds / max(step_seconds, 1e-9))))


def measure(runs: dict[str, Callable[[int], float]], batch_size: int, max_steps: int,
            window_seconds: float, windows: int) -> dict[str, Measurement]:
    """Time each contender in ``runs`` over ``windows`` windows of about ``window_seconds``.

    Per contender: two probe windows of ``PROBE_STEPS`` steps (the first
    includes compilation, the second sizes the real windows). Then
    ``windows + 1`` rounds, each running one window of every contender in turn;
    the first round only warms up.
    """
    load = os.getloadavg()[0]
    first, steps = {}, {}
    for name, run in runs.items():
        first[name] = run(PROBE_STEPS)
        steps[name] = steps_for(run(PROBE_STEPS) / PROBE_STEPS, window_seconds, max_steps)
    seconds = {name: [] for name in runs}
    cpu = {name: 0.0 for name in runs}
    wall = {name: 0.0 for name in runs}
    for round_ in range(windows + 1):
        for name, run in runs.items():
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            elapsed = run(steps[name])
            if round_:
                seconds[name].append(elapsed)
                cpu[name] += time.process_time() - cpu_start
                wall[name] += time.perf_counter() - wall_start
    results = {}
    for name in runs:
        step_seconds = statistics.median(seconds[name]) / steps[name]
        results[name] = Measurement(
            images_per_second=batch_size / step_seconds,
            compile_seconds=first[name] - PROBE_STEPS * step_seconds,
            steps_per_window=steps[name],
            window_images_per_second=[steps[name] * batch_size / s for s in seconds[name]],
            cpu_share=cpu[name] / (wall[name] * (os.cpu_count() or 1)),
            load_average_1min=load,
        )
    return results


def paired_ratio(a: Measurement, b: Measurement) -> float:
    """The median over rounds of ``a``'s images/s over ``b``'s in the same round."""
    return statistics.median(x / y for x, y in zip(a.window_images_per_second, b.window_images_per_second))
