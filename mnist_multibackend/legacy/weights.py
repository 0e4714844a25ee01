"""Weights in Keras 2's layout: ``layer_names``, then one group per layer holding its ``weight_names`` datasets.

The same layout is the ``model_weights`` group of a full-model file and the
whole of a weights-only file (``model.save_weights`` in Keras 2).
"""

from __future__ import annotations

import h5py
import keras
import numpy as np

# Keras 3's own reader of Keras 2 weight groups (topological loading with shape
# checks, long attributes split into chunks) is reused as it stands, through
# keras_private. Its model and optimizer loading is not: it resolves class names
# among all of keras.layers (Lambda included), rejects Keras 2's Adam config and
# drops the optimizer state.
from .. import keras_private
from ..atomic import atomic_path
from ..errors import InputError, first_line
from .safety import open_h5

# Keras 2 readers take this attribute as the convolution-kernel convention of the
# weights (they flip kernels saved by Theano). Keras 3 kernels follow TensorFlow's
# convention on every backend, so a file written on JAX says "tensorflow" too.
KERNEL_CONVENTION = "tensorflow"
CONV_LAYERS = frozenset({"Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose", "Conv3DTranspose", "ConvLSTM2D",
                         "SeparableConv1D", "SeparableConv2D", "DepthwiseConv2D"})


def _keras2_weights(layer) -> list:
    # Keras 2 saved and loaded trainable weights first, then the others.
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def names_attribute(group, name: str, values) -> None:
    """Write a list of names (``layer_names``, ``weight_names``) as the attribute Keras 2 wrote."""
    # Keras 2 wrote fixed-length byte strings, and an empty float array for "no names".
    keras_private.save_attributes_to_hdf5_group(
        group, name, np.array([v.encode("utf8") for v in values], dtype="S") if values else np.array([]))


def write_weights_group(group: h5py.Group, model: keras.Model) -> None:
    """Keras 2's layout: ``layer_names``, then one group per layer holding its ``weight_names`` datasets."""
    names_attribute(group, "layer_names", [layer.name for layer in model.layers])
    group.attrs["backend"] = KERNEL_CONVENTION.encode("utf8")
    group.attrs["keras_version"] = keras.__version__.encode("utf8")
    for layer in model.layers:
        layer_group = group.create_group(layer.name)
        weights = _keras2_weights(layer)
        # Keras 2 named a weight after its own layer and itself ("conv0/kernel:0"), also inside nested models.
        names = ["/".join(w.path.split("/")[-2:]) + ":0" for w in weights]
        names_attribute(layer_group, "weight_names", names)
        for name, weight in zip(names, weights):
            layer_group.create_dataset(name, data=keras.ops.convert_to_numpy(weight))


def read_weights_group(group: h5py.Group, model: keras.Model, source) -> None:
    """Assign a Keras 2 weights group to ``model``, layer by layer in order, checking every count and shape."""
    backend = group.attrs.get("backend", b"")
    backend = backend.decode("utf8") if hasattr(backend, "decode") else str(backend)
    if backend == "theano" and any(type(layer).__name__ in CONV_LAYERS and layer.weights for layer in model.layers):
        raise InputError(source, "saved with the Theano backend, whose convolution kernels are flipped; "
                                 "convert it with Keras 2 first")
    try:
        layer_names = keras_private.load_attributes_from_hdf5_group(group, "layer_names")
        if not layer_names:
            raise InputError(source, "no 'layer_names' attribute: not a Keras 2 weights file")
        keras_private.load_weights_from_hdf5_group(group, model)
    except (InputError, keras_private.KerasPrivateError):
        raise
    except Exception as err:  # noqa: BLE001 - a missing group, wrong count or shape: the weights do not fit
        raise InputError(source, f"weights do not fit the model ({first_line(err, limit=300)})") from None


def save_weights_h5(model: keras.Model, path) -> None:
    """Write the model's weights as Keras 2's ``save_weights`` did, under any name (``.h5`` included)."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            write_weights_group(f, model)


def load_weights_h5(model: keras.Model, path) -> keras.Model:
    """Load a Keras 2 weights file (or the weights of a Keras 2 full-model file) into ``model``."""
    with open_h5(path) as f:
        group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        read_weights_group(group, model, path)
    return model
