"""Weights in Keras 2's layout: ``layer_names``, then one group per layer holding its ``weight_names`` datasets.

The same layout is the ``model_weights`` group of a full-model file and the
whole of a weights-only file (``model.save_weights`` in Keras 2).

Weights saved by Theano: convolution kernels are flipped as Keras 2 did. A
channels_first model (Theano's default ``image_data_format``) keeps its
layout, so it takes the same inputs as in the file: JAX runs it as it is, and
TensorFlow through XLA (``architecture.runnable_on_this_backend``), since
TensorFlow's own CPU kernels take NHWC only (Keras 2's TensorFlow backend
transposed around them; Keras 3's and tf_keras's do not). Converting it to
channels_last instead would change its inputs and its config (data formats,
BatchNormalization axes, the rows of the Dense after Flatten).
"""

from __future__ import annotations

import math

import h5py
import keras
import numpy as np

# Keras 3's writer of long name lists (split into chunks as Keras 2 did) is reused through
# keras_private. Reading is done here (safety's checked readers), not by Keras's reader of
# Keras 2 weight groups, which reads each array before comparing its shape with the model's.
from .. import keras_private
from ..atomic import atomic_path
from ..errors import InputError, first_line
from . import recurrent
from .safety import get_dataset, get_group, open_h5, read_array, read_names, read_text_attribute

# Keras 2 readers take this attribute as the convolution-kernel convention of the
# weights (they flip kernels saved by Theano). Keras 3 kernels follow TensorFlow's
# convention on every backend, so a file written on JAX says "tensorflow" too.
KERNEL_CONVENTION = "tensorflow"


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

    Layers and their weights are matched by position, never by name, as
    Keras 2 did: a group's inner names may be another model's
    (``dense_1/dense_1_1/kernel:0`` after a rename). Every count (layers,
    weights per layer) and every array's shape and dtype is checked against
    the model before any array is read; nothing is assigned unless all of
    them fit. Keras 2's dialects are converted as Keras 2 converted them on
    load: cuDNN recurrent weights, and convolution kernels saved by Theano.
    A ``Sequential`` saved without an input shape is built first from the
    shape of its first weights.
    """
    theano = _saved_by_theano(group, source)
    layer_names = read_names(group, "layer_names", source)
    if not layer_names:
        raise InputError(source, "no 'layer_names' attribute: not a Keras 2 weights file")
    saved = []  # (layer name in the file, its datasets' metadata), for the layers that have weights
    for name in layer_names:
        layer_group = get_group(group, name, source, "layer_names")
        weight_names = read_names(layer_group, "weight_names", source)
        if weight_names:
            saved.append((name, [(f"{name}/{weight_name}",
                                  get_dataset(layer_group, weight_name, source, f"layer {name!r}"))
                                 for weight_name in weight_names]))
    if not model.built:
        _build_from_weights(model, saved, source)
    layers = [layer for layer in model.layers if _keras2_weights(layer)]
    if len(saved) != len(layers):
        raise InputError(source, f"weights do not fit the model (the file holds weights for {len(saved)} layers, "
                                 f"the model has {len(layers)} layers with weights)")
    plan = []
    for (name, datasets), layer in zip(saved, layers):
        weights = _keras2_weights(layer)
        if len(datasets) != len(weights):
            raise InputError(source, f"weights do not fit the model (layer {name!r} holds {len(datasets)} "
                                     f"arrays; the model's layer {layer.name!r} has {len(weights)} weights)")
        shapes = [tuple(dataset.shape) for _, dataset in datasets]
        convert = _conversion(layer, shapes, theano)
        if convert is None:
            misfits = [(what, dataset, weight) for (what, dataset), weight in zip(datasets, weights)
                       if tuple(dataset.shape) != tuple(weight.shape)]
            what, dataset, weight = (misfits or [(*datasets[0], weights[0])])[0]
            raise InputError(source, f"weights do not fit the model ({what} has shape {tuple(dataset.shape)}; "
                                     f"{weight.path} has {tuple(weight.shape)})")
        plan.append((datasets, convert, weights))
    extra = group.get("top_level_model_weights")
    if isinstance(extra, h5py.Group) and read_names(extra, "weight_names", source):
        raise InputError(source, "holds weights of the model itself outside its layers, which a model built "
                                 "from a Keras 2 config does not have")
    for datasets, convert, weights in plan:
        arrays = convert([read_array(dataset, dataset.shape, source, what) for what, dataset in datasets])
        for array, weight in zip(arrays, weights):
            weight.assign(array)


def _saved_by_theano(group: h5py.Group, source) -> bool:
    # Keras 2 wrote its backend on every weights group (the file's root, or model_weights) and read it there.
    return "backend" in group.attrs and read_text_attribute(group, "backend", source, limit=100) == "theano"


# Theano convolved where TensorFlow correlates, so Keras 2 reversed the spatial axes of these layers' kernels
# (and ConvLSTM2D's recurrent kernel) saved by Theano: Keras 2.1 engine/topology.py
# preprocess_weights_for_loading, conv_utils.convert_kernel. Keras 3 correlates on every backend.
THEANO_FLIPPED_LAYERS = {"Conv1D": 1, "Conv2D": 1, "Conv3D": 1, "Conv2DTranspose": 1, "ConvLSTM2D": 2}


def convert_kernel(kernel: np.ndarray) -> np.ndarray:
    """A convolution kernel ``(*spatial, in, out)`` of Theano as TensorFlow's, and back: spatial axes reversed."""
    return np.ascontiguousarray(kernel[(slice(None, None, -1),) * (kernel.ndim - 2)])


def _conversion(layer, shapes: list, theano: bool):
    """The function from the arrays a Keras 2 file holds for ``layer`` (of ``shapes``) to its weights,
    or ``None`` if they do not fit it."""
    kind = type(layer).__name__
    if kind == "Bidirectional":  # the forward layer's arrays, then the backward layer's
        half = len(shapes) // 2
        forward = _conversion(layer.forward_layer, shapes[:half], theano)
        backward = _conversion(layer.backward_layer, shapes[half:], theano)
        if forward is None or backward is None:
            return None
        return lambda arrays: forward(arrays[:half]) + backward(arrays[half:])
    if kind == "TimeDistributed":
        return _conversion(layer.layer, shapes, theano)
    if shapes == [tuple(w.shape) for w in _keras2_weights(layer)]:
        convert = list
    elif shapes == recurrent.cudnn_shapes(layer):
        convert = lambda arrays: recurrent.from_cudnn(layer, *arrays)  # noqa: E731
    else:
        return None
    flipped = THEANO_FLIPPED_LAYERS.get(kind, 0) if theano else 0
    return lambda arrays: [convert_kernel(a) for a in arrays[:flipped]] + convert(arrays[flipped:])


def _build_from_weights(model: keras.Model, saved: list, source) -> None:
    """Build a ``Sequential`` that Keras 2 built lazily (no input shape saved) from its first weights' shape."""
    first = model.layers[0] if model.layers else None
    kernel_shape = tuple(saved[0][1][0][1].shape) if saved and saved[0][1] else None
    input_shape = _input_shape(first, kernel_shape) if first is not None and kernel_shape else None
    hint = ("give it in the first layer's config (batch_input_shape) or build the model "
            "(model.build(input_shape)) before loading its weights")
    if input_shape is None:
        raise InputError(source, f"the model has no input shape and its weights do not tell it; {hint}")

    def build():
        clone = keras.Sequential.from_config(model.get_config())
        clone.build(input_shape)
        return clone

    try:
        # The weights bound what the model may allocate: a layer of the model holds at most what the file does.
        parameters = keras_private.count_unallocated_parameters(build)
        if parameters > sum(math.prod(dataset.shape) for _, datasets in saved for _, dataset in datasets):
            raise InputError(source, f"weights do not fit the model (built for input {input_shape}, it has "
                                     f"{parameters:,} parameters, more than the file holds)")
        model.build(input_shape)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever Keras raises for a shape the layers do not take
        raise InputError(source, f"the model has no input shape and building it for {input_shape}, as its "
                                 f"weights suggest, failed ({first_line(err, limit=200)}); {hint}") from None


def _input_shape(layer, kernel_shape: tuple) -> tuple | None:
    """The input shape that the first layer's first weights (of ``kernel_shape``) imply, or ``None``."""
    if type(layer).__name__ == "Bidirectional":
        layer = layer.forward_layer
    kind = type(layer).__name__
    if kind == "Embedding":
        return (None, None)
    if kind == "Dense":
        return (None, kernel_shape[0])
    if kind in ("SimpleRNN", "LSTM", "GRU"):
        return (None, None, kernel_shape[0])
    if kind in ("Conv1D", "Conv2D", "Conv3D") and len(kernel_shape) >= 3:
        # A kernel says the input's channels only; any size of the other axes fits.
        spatial, channels = (None,) * (len(kernel_shape) - 2), kernel_shape[-2]
        return (None, channels, *spatial) if layer.data_format == "channels_first" else (None, *spatial, channels)
    return None


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
