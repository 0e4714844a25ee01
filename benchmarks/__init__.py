"""Studies of the training speed, and the results of every benchmark: run from a checkout, not installed.

The benchmark feature itself (``mnist-mb bench``, ``mnist-mb time-to-accuracy``)
is ``mnist_multibackend.bench``. This folder holds one-off studies built on it,
each run from the repository's root as ``python -m benchmarks.NAME --help``:

- ``overhead``: the project's training path against a plain Keras loop.
- ``tf_cpu_options``: TensorFlow CPU options (steps per execution, threads,
  batch, oneDNN, bfloat16), one fresh process each.
- ``profile_jax``: where one JAX/CPU training step spends its time, per XLA
  operation and layer.
- ``jax_cpu_remedies``: the JAX/CPU forms of ``mnist_multibackend.jax_cpu`` against Keras's own.

``results/`` holds the committed results of the bench, time to accuracy and
these studies, which docs/performance.md quotes.
"""
