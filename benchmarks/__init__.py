"""Benchmarks: how fast the model trains and predicts on each backend and device, and why.

Run them with ``mnist-mb bench [--quick] [--out DIR]``. The pieces:

- ``run``: the orchestrator. It starts one fresh worker process per backend and
  device (a process can hold only one Keras backend), then measures the data
  path, and writes ``results.json``, ``results.md`` and ``results.png``.
- ``throughput``: the worker, ``python -m benchmarks.throughput --backend B
  --device D``; prints one JSON object on stdout.
- ``timing``: probes, interleaved windows, medians.
- ``flops``: the model's cost per image, counted from its layer shapes.
- ``peak``: the device's dense fp32 matmul rate, the yardstick for "percent of peak".
- ``core``, ``raw_jax``, ``raw_tf``: the same network without Keras, as references.
- ``datapath``: IDX -> CSV conversion and CSV loading, against the original per-byte loop.
- ``report``: the Markdown table and the bar chart.
- ``workers``: a worker process's environment and its one JSON answer.

And the training-speed studies, each a command of its own:

- ``time_to_accuracy``: ``mnist-mb time-to-accuracy``, seconds from a fresh
  process to 99.25 % test accuracy per backend and recipe.
- ``overhead``: the project's training path against a plain Keras loop.
- ``tf_cpu_options``: TensorFlow CPU options (steps per execution, threads,
  batch, oneDNN, bfloat16), one fresh process each.
- ``profile_jax``: where one JAX/CPU training step spends its time, per XLA
  operation and layer; ``jax_cpu_remedies``: the JAX/CPU forms against Keras's own.

Nothing in this package imports Keras at import time: the worker chooses the
backend first, as the command line does.
"""
