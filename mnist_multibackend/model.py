"""The 2017 MNIST CNN, layer for layer, in backend-neutral Keras 3.

Import this module only after ``runtime.start()`` has chosen the backend.

It only defines and compiles the model: loading saved files is ``loading``'s
concern, scoring ``evaluation``'s, so that this module needs nothing but Keras.

Layer names are the original's, including Keras 2's automatic ones
(``activation_1``, ``dropout_1``, ``flatten_1``), so that weights and legacy
files map onto the layers by name.
"""

import keras
import numpy as np
from keras import layers


INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
# The original recipe: Keras 2.1.2's Adam defaults (its epsilon was 1e-8;
# Keras 3's default is 1e-7) and categorical cross-entropy on one-hot labels.
LEARNING_RATE = 1e-3
ADAM_EPSILON = 1e-8


def _conv_bn_relu(x, filters: int, index: int, synchronized: bool = False):
    x = layers.Conv2D(filters, (3, 3), padding="valid", name=f"conv{index}")(x)
    x = layers.BatchNormalization(momentum=0.99, epsilon=1e-3, synchronized=synchronized, name=f"bn{index}")(x)
    return layers.Activation("relu", name=f"activation_{index + 1}")(x)


def build_model(synchronized_batch_norm: bool = False) -> keras.Model:
    """The original architecture: 330,730 parameters, 330,346 of them trainable.

    Input ``float32 (batch, 28, 28, 1)`` in [0, 1]; output ``(batch, 10)`` softmax probabilities.
    ``synchronized_batch_norm`` (TensorFlow only) makes batch normalisation use
    the statistics of the global batch under a ``tf.distribute`` strategy, as
    on one device, instead of each replica's share of it.
    """
    sync = synchronized_batch_norm
    inputs = keras.Input(shape=INPUT_SHAPE, name="input_1")
    x = _conv_bn_relu(inputs, 32, 0, sync)
    x = _conv_bn_relu(x, 32, 1, sync)
    x = layers.MaxPooling2D((2, 2), name="MP1")(x)
    x = _conv_bn_relu(x, 64, 2, sync)
    x = _conv_bn_relu(x, 64, 3, sync)
    x = layers.MaxPooling2D((2, 2), name="MP2")(x)
    x = layers.Dropout(0.2, name="dropout_1")(x)
    x = layers.Flatten(name="flatten_1")(x)
    x = layers.Dense(256, activation="relu", name="fc1")(x)
    x = layers.Dropout(0.4, name="dropout_2")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="fco")(x)
    return keras.Model(inputs, outputs, name="mnist_cnn")


def compile_model(model: keras.Model, learning_rate=LEARNING_RATE) -> keras.Model:
    """Compile with the original recipe; ``learning_rate`` may also be a schedule."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate, epsilon=ADAM_EPSILON),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def first_non_finite(weights):
    """The first of ``weights`` (Keras variables) of floating point that holds NaN or infinity; None if none.
    Such a model gives confident nonsense: ReLU and pooling hide a NaN."""
    for weight in weights:
        if weight.dtype.startswith(("float", "bfloat")) and not np.isfinite(keras.ops.convert_to_numpy(weight)).all():
            return weight
    return None


def plain_copy(model: keras.Model, learning_rate=LEARNING_RATE) -> keras.Model:
    """``model``'s weights and optimizer state in a new, ordinary model: float32, on no distribution.

    What is saved after a data-parallel or a mixed-precision run, so that the files are those of
    the original model (no dtype policy, no synchronised batch norm) and load anywhere.
    """
    copy = compile_model(build_model(), learning_rate)
    copy.set_weights(model.get_weights())
    copy.optimizer.build(copy.trainable_variables)
    for mine, theirs in zip(copy.optimizer.variables, model.optimizer.variables, strict=True):
        mine.assign(keras.ops.convert_to_numpy(theirs))
    return copy


def __getattr__(name):
    # ``model.load_saved_model`` was this module's until loading got its own module; the old
    # name still works without this module importing h5py, YAML and the legacy readers.
    if name == "load_saved_model":
        from .loading import load_saved_model

        return load_saved_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
