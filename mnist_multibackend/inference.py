"""A Keras model's forward pass, compiled once, run over many inputs without Keras's predict loop.

Import this module only after ``runtime.start()`` has chosen the backend.

``model.predict`` builds a data pipeline, an epoch iterator and callbacks on
every call and runs each batch through them; on TensorFlow, on a 2-core AVX2
host, that made inference 0.37-0.79x the speed of the raw reference's bare
``tf.function`` at batch 32-500 (``python -m benchmarks.inference_paths``); on
JAX, Keras's predict was already within noise of the raw reference, and so is this.
``ForwardPass`` is that bare function around the model itself: on TensorFlow a
``tf.function`` calling ``model(x, training=False)``, on JAX a ``jax.jit`` of
``model.stateless_call`` on the variables' current values. The model stays
a plain Keras model: its weights, layers and saved files are not touched.

Batches have one shape, ``batch_size`` rows (the last one padded with zeros,
its padding's outputs dropped), so the function is traced and compiled once.
Each batch's outputs are copied to the host before the next batch is
converted. Dispatching the next batch first, so that converting it would
overlap the device's work, measured no faster on JAX (0.95-1.04x: converting a
batch takes well under 1 % of its forward pass); TensorFlow's CPU calls return
only when done anyway.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np


class ForwardPass:
    """``model``'s outputs for batches of ``batch_size`` inputs: ``model(x, training=False)``, compiled once.

    ``model`` has one input and one output (a classifier: ``(None, 28, 28, 1)`` to
    ``(None, 10)``, or any other shapes). On TensorFlow the function is compiled
    with XLA when ``xla`` is true; by default, as ``tensorflow_xla`` chooses.
    """

    def __init__(self, model: keras.Model, batch_size: int, xla: bool | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1. Received: batch_size={batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.backend = keras.backend.backend()
        self.xla = xla
        self._compiled = None  # made at the first batch, whose shape and dtype it takes

    @property
    def uses_xla(self) -> bool:
        """Whether the forward pass is compiled with XLA (always on JAX)."""
        if self.backend == "tensorflow":
            return tensorflow_xla(self.model) if self.xla is None else self.xla
        return self.backend == "jax"

    def predict(self, inputs, prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """All ``inputs`` (indexable along the first axis), ``batch_size`` at a time -> the outputs on the host.

        ``prepare`` turns each slice of ``inputs`` into the model's input (e.g. ``uint8``
        digits into ``float32`` pixels); it sees one batch at a time, so the prepared
        copy of all the inputs is never made.
        """
        outputs = None
        for start in range(0, len(inputs), self.batch_size):
            batch = inputs[start:start + self.batch_size]
            batch = prepare(batch) if prepare is not None else np.asarray(batch)
            result = np.asarray(self.dispatch(pad_to(batch, self.batch_size)))  # waits for the device
            if outputs is None:
                outputs = np.empty((len(inputs), *result.shape[1:]), result.dtype)
            outputs[start:start + len(batch)] = result[:len(batch)]
        if outputs is None:  # no inputs
            outputs = np.empty((0, *self._output_shape()), np.float32)
        return outputs

    def dispatch(self, batch: np.ndarray):
        """The outputs for one batch of exactly ``batch_size`` inputs, as a backend array (on JAX it may
        return before the device is done; ``np.asarray`` of it waits)."""
        if len(batch) != self.batch_size:
            raise ValueError(f"a batch of {self.batch_size} inputs is expected. Received: {len(batch)}")
        if self._compiled is None:
            self._compiled = self._compile(batch)
        return self._compiled(batch)

    def _compile(self, batch: np.ndarray):
        model = self.model
        if self.backend == "jax":
            import jax

            forward = jax.jit(lambda trainable, non_trainable, x:
                              model.stateless_call(trainable, non_trainable, x, training=False)[0])

            def run(x):
                # The variables' values at each call: training, set_weights or Keras's own predict
                # (which donates them) replace the arrays, so none is kept from an earlier call.
                return forward([v.value for v in model.trainable_variables],
                               [v.value for v in model.non_trainable_variables], x)

            return run
        import tensorflow as tf  # the project's other backend (runtime.BACKENDS)

        signature = [tf.TensorSpec((self.batch_size, *batch.shape[1:]), tf.as_dtype(batch.dtype))]
        return tf.function(lambda x: model(x, training=False), input_signature=signature, jit_compile=self.uses_xla)

    def _output_shape(self) -> tuple:
        try:
            return tuple(self.model.outputs[0].shape[1:])
        except (AttributeError, ValueError, IndexError):  # a Sequential never built
            return ()


def tensorflow_xla(model: keras.Model) -> bool:
    """Whether TensorFlow compiles ``model``'s forward pass with XLA: unless one of its layers cannot run
    under XLA (``supports_jit``), or always when the model is marked so (``model.jit_compile``, as ``legacy``
    marks channels_first models, whose layout only XLA runs on a CPU).

    Keras turns XLA off on a machine without a GPU; for the forward pass alone it was faster on a CPU:
    1.04-1.26x TensorFlow's own kernels at batch 32-500 (three runs) on a 2-core AVX2 host (oneDNN off), in
    ``python -m benchmarks.inference_paths``. Not measured on an AVX-512 host, where TensorFlow's
    oneDNN kernels are on: that benchmark's ``project ÷ project-no-xla`` row decides it there.
    """
    from .legacy.architecture import layers_within

    if getattr(model, "jit_compile", False) is True:
        return True
    return all(getattr(layer, "supports_jit", True) for layer in [model, *layers_within(model.layers)])


def pad_to(batch: np.ndarray, rows: int) -> np.ndarray:
    """``batch`` with zero rows appended up to ``rows`` (``batch`` itself when it has them)."""
    if len(batch) == rows:
        return batch
    padded = np.zeros((rows, *batch.shape[1:]), batch.dtype)
    padded[:len(batch)] = batch
    return padded
