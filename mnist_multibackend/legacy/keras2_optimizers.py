"""Keras 3 optimizers that take exactly Keras 2's steps where Keras 3's own optimizers take others.

The reference is Keras 2 as ``tf_keras`` 2.21 runs a file's ``training_config``:
``tf_keras.models.load_model`` builds its *legacy* optimizers
(``tf_keras/src/optimizers/__init__.py`` ``deserialize``: a config without
``is_legacy_optimizer`` is legacy), whose updates are TensorFlow's raw training
ops or Python in ``tf_keras/src/optimizers/legacy/*.py``. Keras 2.1's own
``keras/optimizers.py`` computes the same updates. SGD, Adadelta, Adam
(amsgrad too) and Adamax are Keras 3's built-ins unchanged; these three differ:

- RMSprop without momentum: Keras 2 adds epsilon *outside* the square root,
  ``var - lr * g / (sqrt(rms) + epsilon)`` (``legacy/rmsprop.py``
  ``_resource_apply_dense``, the Python branch; Keras 2.1 ``new_p = p - lr * g /
  (K.sqrt(new_a) + self.epsilon)``); Keras 3 always takes ``sqrt(velocity +
  epsilon)`` (``keras/src/optimizers/rmsprop.py`` ``update_step``). With momentum
  Keras 2 calls ``ResourceApplyRMSProp`` / ``ResourceApplyCenteredRMSProp``, whose
  epsilon is inside, as in Keras 3.
- Adagrad: ``ResourceApplyAdagradV2`` (``legacy/adagrad.py``) computes
  ``var - lr * g / (sqrt(accum) + epsilon)``; Keras 3 ``sqrt(accumulator + epsilon)``.
- Nadam: Keras 2's momentum schedule is ``beta_1 * (1 - 0.5 * 0.96 ** (t *
  schedule_decay))`` with ``schedule_decay = 0.004`` (``legacy/nadam.py``
  ``_prepare_local``: ``tf.pow(decay_base, self._initial_decay * local_step)``;
  Keras 2.1 ``K.pow(0.96, t * self.schedule_decay)``); Keras 3 uses ``0.96 ** t``
  (``keras/src/optimizers/nadam.py``), i.e. a schedule decay of 1.

Each is registered (package ``mnist_multibackend``), so a ``.keras`` file saved
after loading a Keras 2 file loads again in safe mode once this package is imported.
"""

from __future__ import annotations

import keras
from keras import ops

from .. import keras_private

PACKAGE = "mnist_multibackend"


@keras.saving.register_keras_serializable(package=PACKAGE)
class Keras2RMSprop(keras.optimizers.RMSprop):
    """RMSprop with Keras 2's epsilon outside the square root when there is no momentum."""

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum > 0:  # ResourceApply(Centered)RMSProp: Keras 3's own update
            return super().update_step(gradient, variable, learning_rate)
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        rms = keras_private.slot_of(self, "velocity", variable)
        self.assign(rms, ops.add(ops.multiply(self.rho, rms), ops.multiply(1 - self.rho, ops.square(gradient))))
        denominator = rms
        if self.centered:
            mean_gradient = keras_private.slot_of(self, "average_gradient", variable)
            self.assign(mean_gradient, ops.add(ops.multiply(self.rho, mean_gradient),
                                               ops.multiply(1 - self.rho, gradient)))
            denominator = ops.subtract(rms, ops.square(mean_gradient))
        self.assign_sub(variable, ops.divide(ops.multiply(lr, gradient), ops.add(ops.sqrt(denominator),
                                                                                 self.epsilon)))


@keras.saving.register_keras_serializable(package=PACKAGE)
class Keras2Adagrad(keras.optimizers.Adagrad):
    """Adagrad with Keras 2's epsilon outside the square root."""

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        accumulator = keras_private.slot_of(self, "accumulator", variable)
        self.assign_add(accumulator, ops.square(gradient))
        self.assign_sub(variable, ops.divide(ops.multiply(lr, gradient), ops.add(ops.sqrt(accumulator),
                                                                                 self.epsilon)))


@keras.saving.register_keras_serializable(package=PACKAGE)
class Keras2Nadam(keras_private.StepStartHook, keras.optimizers.Nadam):
    """Nadam with Keras 2's momentum schedule ``beta_1 * (1 - 0.5 * 0.96 ** (t * schedule_decay))``.

    Its momentum product (Keras 2's ``m_schedule``) is Keras 3 Nadam's own
    variable, updated once per step before the weights are.
    """

    def __init__(self, *args, schedule_decay: float = 0.004, **kwargs):
        super().__init__(*args, **kwargs)
        self.schedule_decay = schedule_decay

    def momentum_cache(self, step, dtype):
        """Keras 2's ``momentum_cache_t`` at (1-based) ``step``."""
        exponent = ops.multiply(ops.cast(step, dtype), ops.cast(self.schedule_decay, dtype))
        return ops.cast(self.beta_1, dtype) * (1.0 - 0.5 * ops.power(ops.cast(0.96, dtype), exponent))

    def at_step_start(self) -> None:
        product = keras_private.nadam_momentum_product(self)
        self.assign(product, product * self.momentum_cache(self.iterations + 1, product.dtype))

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        cache, next_cache = self.momentum_cache(step, dtype), self.momentum_cache(step + 1, dtype)
        schedule = ops.cast(keras_private.nadam_momentum_product(self), dtype)  # already times `cache`
        next_schedule = schedule * next_cache
        m = keras_private.slot_of(self, "momentum", variable)
        v = keras_private.slot_of(self, "velocity", variable)
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - beta_2))
        m_bar = ops.add(ops.divide(ops.multiply(1 - cache, gradient), 1 - schedule),
                        ops.divide(ops.multiply(next_cache, m), 1 - next_schedule))
        v_hat = ops.divide(v, 1 - ops.power(beta_2, step))
        self.assign_sub(variable, ops.divide(ops.multiply(m_bar, lr), ops.add(ops.sqrt(v_hat), self.epsilon)))

    def get_config(self):
        return {**super().get_config(), "schedule_decay": self.schedule_decay}
