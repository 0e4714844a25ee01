"""The benchmarks behind ``mnist-mb bench`` and ``mnist-mb time-to-accuracy``.

Every measurement runs in a fresh worker process (a process can hold only one
Keras backend): the commands start ``python -m mnist_multibackend.bench.MODULE``
and read its one JSON answer (``workers``, the protocol and its failure policy).

- ``matrix``: ``mnist-mb bench``, the throughput matrix: one ``throughput``
  worker per backend and device, then the data path, then the report.
- ``throughput``: the worker that measures one backend on one device: training
  and inference, Keras against the raw reference, against the matmul peak.
- ``time_to_accuracy``: ``mnist-mb time-to-accuracy``, both its sides: seconds
  from a fresh process to 99.25 % test accuracy per backend and recipe.
- ``timing``: probes, interleaved windows, medians; ``peak``: the device's
  dense fp32 matmul rate; ``flops``: the model's cost per image.
- ``core``, ``raw_jax``, ``raw_tf``: the same network without Keras, as references.
- ``datapath``: IDX -> CSV conversion and CSV loading, against the original per-byte loop.
- ``report``: ``results.json`` and ``results.md`` for every benchmark; the bench's table and chart.
- ``last_run``: the per-user summary of the last bench (the fastest backend per mode, on which CPU)
  that ``mnist-mb doctor`` reads.

Nothing here imports Keras at import time: a worker chooses its backend
first, as the command line does. The one-off studies built on these modules
live in the checkout's ``benchmarks/`` folder, which is not installed.
"""
