"""The callbacks every training run uses: epoch timing, time to accuracy, an honest progress bar.

Import this module only after ``runtime.start()`` has chosen the backend.
"""

from __future__ import annotations

import time

import keras


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of each epoch's training steps, without its validation pass.

    JAX dispatches steps asynchronously (and Keras then runs batch callbacks
    in a thread pool), so the clock is read only after one of the model's
    weights has been copied to the host: that waits for every queued step.
    """

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def _stop(self):
        if self._start is not None:
            keras.ops.convert_to_numpy(self.model.trainable_variables[-1].value)
            self.seconds.append(time.perf_counter() - self._start)
            self._start = None

    def on_test_begin(self, logs=None):  # fit's validation pass starts: training steps are over
        self._stop()

    def on_epoch_end(self, epoch, logs=None):
        self._stop()


class ElapsedClock(keras.callbacks.Callback):
    """Seconds from ``origin`` (a ``time.perf_counter()`` reading) to the end of each epoch, its
    validation pass included: with the test set as validation data, the time to each test accuracy."""

    def __init__(self, origin: float):
        super().__init__()
        self.origin = origin
        self.seconds: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.origin)


class StepProgbar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, with counts that never pass the epoch's steps.

    With N steps per execution Keras reports each call of the compiled step
    as its last batch, ``begin + N - 1``, even when the epoch's last call runs
    fewer: at 469 steps and N = 32 the bar read ``480/469`` with a negative
    time left. The count is clamped to the epoch's steps.
    """

    def _clamped(self, batch: int) -> int:
        return batch if self.target is None else min(batch, self.target - 1)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(self._clamped(batch), logs)

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(self._clamped(batch), logs)

    def on_predict_batch_end(self, batch, logs=None):
        super().on_predict_batch_end(self._clamped(batch), logs)
