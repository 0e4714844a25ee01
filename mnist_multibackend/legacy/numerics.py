"""Keras 2 functions whose Keras 3 namesakes compute something else, registered under names of their own.

A Keras 2 file that says ``hard_sigmoid`` means Keras 2's function; Keras 3's
``hard_sigmoid`` is another one. The architecture reader swaps the name for the
function here, registered with Keras (``register_keras_serializable``) so that
a ``.keras`` file saved from such a model loads again in safe mode, and the
writer swaps it back to the Keras 2 name.
"""

from __future__ import annotations

import keras

PACKAGE = "mnist_multibackend"


@keras.saving.register_keras_serializable(package=PACKAGE)
def keras2_hard_sigmoid(x):
    """Keras 2's (and tf_keras's) ``hard_sigmoid``: ``clip(0.2 x + 0.5, 0, 1)``.

    Keras 3's ``hard_sigmoid`` is ``relu6(x + 3) / 6``, i.e. slope 1/6, saturating at +-3 instead of +-2.5.
    """
    return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


# Keras 2 activation name -> the function that computes what it meant there.
KERAS2_ACTIVATIONS = {"hard_sigmoid": keras2_hard_sigmoid}
