"""Weights in Keras 2's layout: ``layer_names``, then one group per layer holding its ``weight_names`` datasets.

The same layout is the ``model_weights`` group of a full-model file and the
whole of a weights-only file (``model.save_weights`` in Keras 2).
"""

from __future__ import annotations

import h5py
import keras
import numpy as np

# Keras 3's writer of long name lists (split into chunks as Keras 2 did) is reused through
# keras_private. Reading is done here (safety's checked readers), not by Keras's reader of
# Keras 2 weight groups, which reads each array before comparing its shape with the model's.
from .. import keras_private
from ..atomic import atomic_path
from ..errors import InputError
from .safety import get_dataset, get_group, open_h5, read_array, read_names

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
        # Keras 2 named a weight after its own layer and itself ("conv0/kernel:0"), also inside nested models
        # and wrappers ("forward_gru/gru_cell/kernel:0": the two GRUs of a Bidirectional have the same cell name).
        names = [(w.path.split("/", 1)[1] if w.path.count("/") > 1 else w.path) + ":0" for w in weights]
        names_attribute(layer_group, "weight_names", names)
        for name, weight in zip(names, weights):
            layer_group.create_dataset(name, data=keras.ops.convert_to_numpy(weight))


def read_weights_group(group: h5py.Group, model: keras.Model, source) -> None:
    """Assign a Keras 2 weights group to ``model``, layer by layer in order (as Keras 2 loaded it).

    Every count (layers, weights per layer) and every array's shape and dtype
    is checked against the model before any array is read; nothing is assigned
    unless all of them fit.
    """
    backend = group.attrs.get("backend", b"")
    backend = backend.decode("utf8") if hasattr(backend, "decode") else str(backend)
    if backend == "theano" and any(type(layer).__name__ in CONV_LAYERS and layer.weights for layer in model.layers):
        raise InputError(source, "saved with the Theano backend, whose convolution kernels are flipped; "
                                 "convert it with Keras 2 first")
    layer_names = read_names(group, "layer_names", source)
    if not layer_names:
        raise InputError(source, "no 'layer_names' attribute: not a Keras 2 weights file")
    saved = []  # (layer name in the file, its group, its weight names), for the layers that have weights
    for name in layer_names:
        layer_group = get_group(group, name, source, "layer_names")
        weight_names = read_names(layer_group, "weight_names", source)
        if weight_names:
            saved.append((name, layer_group, weight_names))
    layers = [layer for layer in model.layers if _keras2_weights(layer)]
    if len(saved) != len(layers):
        raise InputError(source, f"weights do not fit the model (the file holds weights for {len(saved)} layers, "
                                 f"the model has {len(layers)} layers with weights)")
    plan = []
    for (name, layer_group, weight_names), layer in zip(saved, layers):
        weights = _keras2_weights(layer)
        if len(weight_names) != len(weights):
            raise InputError(source, f"weights do not fit the model (layer {name!r} holds {len(weight_names)} "
                                     f"arrays; the model's layer {layer.name!r} has {len(weights)} weights)")
        for weight_name, weight in zip(weight_names, weights):
            dataset = get_dataset(layer_group, weight_name, source, f"layer {name!r}")
            if tuple(dataset.shape) != tuple(weight.shape):
                raise InputError(source, f"weights do not fit the model ({name}/{weight_name} has shape "
                                         f"{tuple(dataset.shape)}; {weight.path} has {tuple(weight.shape)})")
            plan.append((dataset, weight, f"{name}/{weight_name}"))
    extra = group.get("top_level_model_weights")
    if isinstance(extra, h5py.Group) and read_names(extra, "weight_names", source):
        raise InputError(source, "holds weights of the model itself outside its layers, which a model built "
                                 "from a Keras 2 config does not have")
    for dataset, weight, what in plan:
        weight.assign(read_array(dataset, weight.shape, source, what))


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
