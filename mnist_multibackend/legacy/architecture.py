"""Model architectures both ways: a Keras 2 ``{class_name, config}`` (from HDF5, ``to_json()`` or ``to_yaml()`` text)
becomes a Keras 3 model, and a Keras 3 model becomes the config Keras 2.1.2 wrote.

What is written follows Keras 2.1.2's dialect (``batch_input_shape``,
``inbound_nodes`` lists, ``{class_name, config}`` objects) so that Keras 2
itself, e.g. ``tf_keras``, reads it.
"""

from __future__ import annotations

import copy
import inspect
import json

import keras
import yaml

from .. import keras_private
from . import recurrent
from ..errors import InputError, first_line
from .numerics import KERAS2_ACTIVATIONS
from .classes import BUILTIN_CLASSES, check_config_classes
from .safety import parse_json, parse_keras2_yaml
from .weights import KERNEL_CONVENTION

# ---------------------------------------------------------------------------
# Keras 2 config -> Keras 3 model
# ---------------------------------------------------------------------------

# Options of Keras 2 layers that Keras 3 lacks and that only chose an
# implementation or repeated the input shape: dropped when they hold the value
# given here (ANY: whatever the value).
ANY = object()
KERAS2_ONLY_OPTIONS = {
    "fused": ANY, "virtual_batch_size": None, "adjustment": None,  # BatchNormalization
    "implementation": ANY, "time_major": False,  # recurrent layers
    "input_length": ANY,  # Embedding: the input shape says it
    "input_dtype": ANY,  # Keras 1's name for dtype of the first layer
    "groups": 1,  # tf_keras's DepthwiseConv and SeparableConv inherited it from Conv and allowed only 1
    "rng_type": ANY, "force_generator": ANY,  # which TF random generator tf_keras drew dropout and noise from
    "query_shape": ANY, "key_shape": ANY, "value_shape": ANY,  # MultiHeadAttention: known again when called
    "softmax_robust_masking": False,  # MultiHeadAttention
}


# Options Keras 2 layers carried but ignored, which Keras 3's namesakes refuse: always dropped.
IGNORED_OPTIONS = {
    # Keras 2's SpatialDropout took Dropout's noise_shape and replaced it with its own; it has no weights.
    **{f"SpatialDropout{n}D": ("noise_shape", "trainable") for n in (1, 2, 3)},
    # tf_keras's SeparableConv inherited Conv's kernel options; it used the depthwise and pointwise ones.
    **{f"SeparableConv{n}D": ("kernel_initializer", "kernel_regularizer", "kernel_constraint") for n in (1, 2)},
}
# Config keys that hold an activation name.
ACTIVATION_KEYS = ("activation", "recurrent_activation")
# Config keys that hold a nested layer: wrappers (Bidirectional, TimeDistributed) and an RNN's cell.
NESTED_LAYER_KEYS = ("layer", "backward_layer", "cell")


def _keras3_layer(layer: dict, source, *, sequential_first=False) -> list:
    """One Keras 2 layer entry as Keras 3 reads it; the first layer of a Sequential may become two."""
    if not isinstance(layer, dict):
        raise InputError(source, f"a layer entry is not a {{class_name, config}} mapping: {str(layer)[:120]}")
    # tf_keras adds "module"/"registered_name" (checked already); without them Keras 3 takes its Keras 2
    # path, which also turns BatchNormalization's axis [3] into 3.
    # tf_keras's build_config is dropped too: Keras 3 builds each layer when the model calls it, as Keras 2 did,
    # while building from it first fails for layers of several inputs (MultiHeadAttention).
    layer = {k: v for k, v in layer.items() if k not in ("module", "registered_name", "build_config")}
    class_name = layer.get("class_name")
    if class_name in ("Model", "Functional", "Sequential"):
        return [{**layer, **_keras3_model_config(layer, source)}]
    if not isinstance(layer.get("config"), dict):
        raise InputError(source, f"layer entry {str(layer)[:120]} has no config mapping")
    class_name, config = _keras3_layer_config(class_name, layer["config"], source)
    name = config.get("name", layer.get("name"))
    batch_input_shape = config.pop("batch_input_shape", None)
    if class_name == "InputLayer":
        if batch_input_shape is not None:
            config["batch_shape"] = list(batch_input_shape)
        return [{**layer, "config": config}]
    entries = []
    if sequential_first and batch_input_shape is not None:
        # Keras 2 kept a Sequential's input shape on its first layer; Keras 3 wants an InputLayer.
        entries.append(_input_layer(batch_input_shape, config.get("dtype"), f"{name}_input"))
    entries.append({**layer, "class_name": class_name, "config": config})
    return entries


def _input_layer(batch_shape, dtype, name: str) -> dict:
    return {"class_name": "InputLayer", "config": {"batch_shape": list(batch_shape), "dtype": dtype or "float32",
                                                   "name": name}}


def _keras3_layer_config(class_name: str, config: dict, source) -> tuple:
    """``(class_name, config)`` of one Keras 2 layer, rewritten so that Keras 3 computes what Keras 2 did."""
    class_name, config = recurrent.keras3_layer(class_name, dict(config))
    for option, neutral in KERAS2_ONLY_OPTIONS.items():
        if option in config and (neutral is ANY or config[option] == neutral):
            del config[option]
    for option in IGNORED_OPTIONS.get(class_name, ()):
        config.pop(option, None)
    if class_name == "ThresholdedReLU":  # gone in Keras 3; x if x > theta else 0 is ReLU's threshold
        class_name, config["threshold"] = "ReLU", config.pop("theta", 1.0)
    if class_name == "LeakyReLU" and "alpha" in config:  # Keras 3 renamed it
        config["negative_slope"] = config.pop("alpha")
    for key in ACTIVATION_KEYS:
        if isinstance(config.get(key), str) and config[key] in KERAS2_ACTIVATIONS:
            config[key] = keras.saving.serialize_keras_object(KERAS2_ACTIVATIONS[config[key]])
    for key, value in config.items():
        if key.endswith("_initializer") and isinstance(value, dict) and isinstance(value.get("config"), dict):
            # tf.contrib.keras (TF 1.1-1.3) wrote TensorFlow's initializers, with a dtype (Keras 3 takes the
            # layer's) and Constant's verify_shape (a check that the value has the weight's shape).
            config[key] = {**value, "config": {k: v for k, v in value["config"].items()
                                               if k not in ("dtype", "verify_shape")}}
    for key in NESTED_LAYER_KEYS:
        if isinstance(config.get(key), dict):
            config[key] = _keras3_nested_layer(config[key], source)
    if isinstance(config.get("cells"), list):  # StackedRNNCells
        config["cells"] = [_keras3_nested_layer(cell, source) for cell in config["cells"]]
    return class_name, config


def _keras3_nested_layer(layer, source) -> dict:
    # Wrappers and RNNs find the class of what they hold by its module, as Keras 3 writes it.
    (entry,) = _keras3_layer(layer, source)
    if entry.get("class_name") in ("Functional", "Sequential"):
        return {**entry, "module": "keras"}
    return {**entry, "module": "keras.layers"}


def _keras3_model_config(model_config: dict, source) -> dict:
    """``{class_name, config}`` of a Keras 2 model, rewritten into what Keras 3's ``from_config`` takes."""
    class_name, config = model_config.get("class_name"), model_config.get("config")
    if class_name == "Sequential":
        if isinstance(config, list):  # Keras before 2.2.3 wrote a bare list of layers
            config = {"name": "sequential", "layers": config}
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise InputError(source, "Sequential config has no list of layers")
        layers = []
        for i, layer in enumerate(config["layers"]):
            layers += _keras3_layer(layer, source, sequential_first=i == 0)
        build_input_shape = config.get("build_input_shape")
        if build_input_shape is not None and layers and layers[0].get("class_name") != "InputLayer":
            # tf.keras 2.x kept the shape a Sequential was built with beside its layers, not on the first one.
            if not isinstance(build_input_shape, (list, tuple)) or not all(
                    d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in build_input_shape):
                raise InputError(source, f"Sequential build_input_shape {str(build_input_shape)[:80]} is not one "
                                         "shape")
            first = layers[0].get("config", {})
            layers.insert(0, _input_layer(build_input_shape, first.get("dtype"), f"{first.get('name')}_input"))
        return {"class_name": "Sequential",
                "config": {"name": config.get("name") or "sequential", "layers": layers}}
    if class_name in ("Model", "Functional"):
        if not isinstance(config, dict) or not all(isinstance(config.get(k), list) for k in
                                                   ("layers", "input_layers", "output_layers")):
            raise InputError(source, f"{class_name} config needs lists 'layers', 'input_layers' and 'output_layers'")
        layers = []
        for layer in config["layers"]:
            (entry,) = _keras3_layer(layer, source)
            if not isinstance(entry.get("name"), str) or not isinstance(entry.get("inbound_nodes"), list):
                raise InputError(source, f"layer entry {str(layer)[:120]} needs a 'name' and 'inbound_nodes'")
            layers.append(entry)
        nested = {entry["name"]: entry["class_name"] for entry in layers
                  if entry.get("class_name") in ("Functional", "Sequential")}
        sequentials = {name for name, kind in nested.items() if kind == "Sequential"}
        names = {entry["name"] for entry in layers}
        for entry in layers:
            entry["inbound_nodes"] = [_keras3_node(node, names) for node in
                                      _shift_nested_calls(entry["inbound_nodes"], set(nested), -1)]
        return {"class_name": "Functional", "config": {
            "name": config.get("name") or "model", "trainable": config.get("trainable", True), "layers": layers,
            "input_layers": _single_endpoint(config["input_layers"]),
            "output_layers": _shift_nested_calls(config["output_layers"], sequentials, -1)}}
    raise InputError(source, f"top-level class is {class_name!r}; expected Model, Functional or Sequential")


def _single_endpoint(endpoints):
    # Keras 2 listed even a single input; Keras 3 writes it alone, and warns when a model that lists it is
    # called on one tensor.
    if isinstance(endpoints, list) and len(endpoints) == 1 and isinstance(endpoints[0], list):
        return endpoints[0]
    return endpoints


def _keras3_node(node, layer_names: set):
    """One Keras 2 node (``[[layer, node_index, tensor_index, kwargs], ...]``) as Keras 3 reads it.

    Keras 3 reads Keras 2's lists itself, but would pass a tensor among the keyword arguments (tf_keras wrote
    MultiHeadAttention's ``value`` and RNNs' ``initial_state`` as ``[layer, node, tensor]`` too) on as a list:
    such a node is written in Keras 3's own form.
    """
    if not (isinstance(node, list) and node and all(isinstance(link, list) and len(link) == 4 for link in node)):
        return node
    kwargs = node[0][3]

    def revive(value, found):
        if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and value[0] in layer_names \
                and all(isinstance(i, int) and not isinstance(i, bool) for i in value[1:]):
            found.append(value)
            return {"class_name": "__keras_tensor__", "config": {"shape": [], "dtype": None,
                                                                 "keras_history": list(value)}}
        if isinstance(value, list):
            return [revive(v, found) for v in value]
        if isinstance(value, dict):
            return {k: revive(v, found) for k, v in value.items()}
        return value

    found = []
    kwargs = revive(kwargs, found)
    if not found:
        return node
    inputs = [revive(link[:3], found) for link in node]
    return {"args": [inputs[0] if len(inputs) == 1 else inputs], "kwargs": kwargs}


def _shift_nested_calls(links, models: set, shift: int):
    """``links`` (``[layer, node_index, tensor_index, ...]`` lists, nested) with the node indices of the nested
    models ``models`` moved by ``shift``.

    Keras 2 counted a nested model's own graph as its node 0 and its calls from 1. Keras 3 counts their calls
    from 0 in inbound nodes; in ``output_layers`` it counts a functional model's from 1 too, a Sequential's from 0.
    """
    if isinstance(links, list) and len(links) >= 3 and isinstance(links[0], str) and isinstance(links[1], int):
        return [links[0], links[1] + shift, *links[2:]] if links[0] in models else links
    if isinstance(links, list):
        return [_shift_nested_calls(link, models, shift) for link in links]
    if isinstance(links, dict):  # keyword arguments may hold tensors
        return {k: _shift_nested_calls(v, models, shift) for k, v in links.items()}
    return links


# The most parameters a config may ask for. Counted exactly before anything is allocated, by building the
# model with unallocated variables (keras_private.count_unallocated_parameters), so every layer counts, not
# only the common ones. 50 million float32 values are 200 MB (600 MB with Adam's moments); the original has
# 330,730, and a config asking for 250,000 units took a 4 MB file to 3.7 GB.
MAX_PARAMETERS = 50_000_000


def model_from_keras2_config(model_config, source="model config") -> keras.Model:
    """Build a Keras 3 model (uncompiled, freshly initialised) from a Keras 2 ``{class_name, config}`` dict.

    Refuses a config of more than ``MAX_PARAMETERS`` parameters before any weight is allocated.
    """
    if not isinstance(model_config, dict) or "class_name" not in model_config:
        raise InputError(source, "not a Keras model configuration (no 'class_name' at the top)")
    check_config_classes(model_config, source)
    try:
        keras3 = _keras3_model_config(model_config, source)
        cls = keras.Sequential if keras3["class_name"] == "Sequential" else keras.Model

        def build():
            # Safe mode even if the process enabled unsafe deserialization elsewhere.
            with keras_private.safe_mode_scope(True):
                return cls.from_config(copy.deepcopy(keras3["config"]))  # from_config may change what it is given

        check_parameter_count(keras_private.count_unallocated_parameters(build), source)
        return runnable_on_this_backend(build())
    except (InputError, keras_private.KerasPrivateError):
        raise
    except Exception as err:  # noqa: BLE001 - malformed, or whatever Keras raises: not a model description
        raise InputError(source, f"not a loadable Keras 2 model ({first_line(err, limit=300)})") from None


def layers_within(layers):
    """Every layer in ``layers`` and, depth first, within them: nested models' layers and wrapped layers."""
    for layer in layers:
        yield layer
        yield from layers_within(getattr(layer, "layers", ()))  # nested models
        yield from layers_within([inner for inner in (getattr(layer, "layer", None),) if inner is not None])


def runnable_on_this_backend(model: keras.Model) -> keras.Model:
    """``model``, set to run wherever this backend runs: a channels_first model (Theano's default layout,
    kept so that the model takes the inputs it took in Keras 2) is compiled with XLA on TensorFlow.

    TensorFlow's own CPU kernels for convolution and pooling take NHWC only; XLA compiles NCHW for the CPU
    too (Keras 3 relies on it for channels_first 3D convolutions). JAX runs either layout as it is. A
    ``model.compile`` afterwards must keep ``jit_compile=True`` on TensorFlow (it defaults to off on a CPU).
    """
    if keras.backend.backend() == "tensorflow" and any(
            getattr(layer, "data_format", None) == "channels_first" for layer in layers_within(model.layers)):
        model.jit_compile = True
    return model


def check_parameter_count(count: int, source) -> None:
    """Refuse a model of more than ``MAX_PARAMETERS`` parameters."""
    if count > MAX_PARAMETERS:
        # filters of 10**400 in a config: a number of 400 digits (or past Python's 4,300) is no message
        said = f"{count:,}" if count < 10**30 else f"about 2^{count.bit_length() - 1}"
        raise InputError(source, f"the model asks for {said} parameters; more than {MAX_PARAMETERS:,} is "
                                 "refused (a cap of this tool; raise "
                                 "mnist_multibackend.legacy.architecture.MAX_PARAMETERS to accept it)")


def model_from_yaml(text: str, source="YAML") -> keras.Model:
    """The architecture in a Keras 2 ``to_yaml()`` text (functional ``Model`` or ``Sequential``), uncompiled."""
    return model_from_keras2_config(parse_keras2_yaml(text, source), source)


def model_from_json(text: str, source="JSON") -> keras.Model:
    """The architecture in a Keras 2 ``to_json()`` text (functional ``Model`` or ``Sequential``), uncompiled."""
    return model_from_keras2_config(parse_json(text, source, "the architecture"), source)


# ---------------------------------------------------------------------------
# Keras 3 model -> Keras 2 config
# ---------------------------------------------------------------------------

# Options Keras 2.1 did not have. At the value given they change nothing, so
# they are left out and every Keras 2 release reads the layer.
NEWER_OPTIONS_AT_DEFAULT = {
    "groups": 1, "synchronized": False, "renorm": False, "renorm_clipping": None, "optional": False,
    "ragged": False, "rms_scaling": False, "use_gate": False, "sliding_window": None, "quantization_config": None,
    "seed": None,  # no Keras 2 layer needs it written, and several (Attention, MultiHeadAttention) refuse it "lora_rank": None, "lora_alpha": None,
}
# Layers that had no data_format in Keras 2 and worked channels-last: Keras 2.1's Flatten, tf_keras's image
# preprocessing layers.
CHANNELS_LAST_ONLY = frozenset({"Flatten", "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
                                "RandomCrop", "RandomContrast", "RandomBrightness", "Resizing", "CenterCrop"})
# (class, Keras 3 option) -> Keras 2's name of that option.
KERAS2_OPTION_NAMES = {("LeakyReLU", "negative_slope"): "alpha"}
# Options no Keras 2 release knows: a model that uses them cannot be written.
KERAS3_ONLY_OPTIONS = frozenset({"quantization_config", "lora_rank", "lora_alpha"})
# Keras 2.1's VarianceScaling called the truncated normal "normal" (tf.keras reads both).
KERAS2_DISTRIBUTIONS = {"truncated_normal": "normal"}


# Registered name of a Keras 2 function (numerics) -> the name Keras 2 gave it.
KERAS2_ACTIVATION_NAMES = {keras.saving.get_registered_name(fn): name for name, fn in KERAS2_ACTIVATIONS.items()}


def _keras2_object(value, where: str):
    """A Keras 3 serialized object (initializer, regularizer ...) as Keras 2's ``{class_name, config}``."""
    if isinstance(value, dict):
        if value.get("class_name") == "function" and value.get("config") in KERAS2_ACTIVATION_NAMES:
            return KERAS2_ACTIVATION_NAMES[value["config"]]
        for key in ACTIVATION_KEYS:
            _refuse_keras3_namesake(key, value.get(key), where)
        if "class_name" in value and "config" in value:
            class_name, config = value["class_name"], value["config"]
            if class_name == "DTypePolicy":
                return _keras2_dtype(value, where)
            if value.get("module") == "keras.initializers" or class_name in _VARIANCE_SCALING:
                return _keras2_initializer(value, where)
            if class_name in ("L1", "L2"):  # Keras 2.1 had only the L1L2 class
                config = {"l1": float(config.get("l1", 0.0)), "l2": float(config.get("l2", 0.0))}
                class_name = "L1L2"
            return {"class_name": class_name, "config": _keras2_object(config, where)}
        return {k: _keras2_object(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_keras2_object(v, where) for v in value]
    return value


def _refuse_keras3_namesake(key: str, activation, where: str) -> None:
    # A Keras 3 function whose name means another function in Keras 2 (numerics) cannot be written.
    if isinstance(activation, str) and activation in KERAS2_ACTIVATIONS:
        raise InputError(where, f"uses Keras 3's {activation} as {key}, which Keras 2 cannot express (Keras 2's "
                                f"{activation} computes another function)")


_VARIANCE_SCALING = frozenset({"VarianceScaling", "GlorotUniform", "GlorotNormal", "HeUniform", "HeNormal",
                               "LecunUniform", "LecunNormal"})


def _keras2_initializer(value: dict, where: str) -> dict:
    initializer = keras.initializers.get(dict(value))
    if isinstance(initializer, keras.initializers.VarianceScaling):
        # Keras 2.1 knew Glorot, He and LeCun only as VarianceScaling settings.
        config = initializer.get_config()
        if config.get("input_axes") is not None or config.get("output_axes") is not None:
            raise InputError(where, "initializer uses input_axes/output_axes, which Keras 2 lacks")
        return {"class_name": "VarianceScaling", "config": {
            "scale": float(initializer.scale), "mode": initializer.mode,
            "distribution": KERAS2_DISTRIBUTIONS.get(initializer.distribution, initializer.distribution),
            "seed": config.get("seed")}}
    return {"class_name": value["class_name"], "config": _keras2_object(value["config"], where)}


def _keras2_dtype(dtype, where: str):
    if isinstance(dtype, dict):  # a Keras 3 DTypePolicy
        name = dtype.get("config", {}).get("name")
        if name not in ("float16", "bfloat16", "float32", "float64"):
            raise InputError(where, f"dtype policy {name!r} cannot be written for Keras 2")
        return name
    return dtype


def _keras2_layer_config(layer: keras.layers.Layer, config: dict) -> dict:
    where = f"layer {layer.name!r} ({type(layer).__name__})"
    out = {}
    for key, value in config.items():
        if key in NEWER_OPTIONS_AT_DEFAULT and value == NEWER_OPTIONS_AT_DEFAULT[key]:
            continue
        if key in KERAS3_ONLY_OPTIONS:
            raise InputError(where, f"uses {key}={value!r}, which Keras 2 cannot express")
        if key == "renorm_momentum" and not config.get("renorm"):
            continue
        if key == "data_format" and type(layer).__name__ in CHANNELS_LAST_ONLY and value == "channels_last":
            continue
        if key in ACTIVATION_KEYS:
            _refuse_keras3_namesake(key, value, where)
        key = KERAS2_OPTION_NAMES.get((type(layer).__name__, key), key)
        if key == "dtype":
            value = _keras2_dtype(value, where)
        elif key == "batch_shape":
            key, value = "batch_input_shape", list(value)
        elif key in NESTED_LAYER_KEYS and isinstance(value, dict) and isinstance(value.get("config"), dict):
            inner = _nested_layer(layer, key)
            out[key] = {"class_name": value["class_name"], "config": _keras2_layer_config(inner, value["config"])}
            continue
        out[key] = _keras2_object(value, where)
    return out


def _nested_layer(layer, key: str):
    """The layer a wrapper (Bidirectional, TimeDistributed) or an RNN writes under ``key``."""
    if key == "layer" and isinstance(layer, keras.layers.Bidirectional):
        return layer.forward_layer
    return getattr(layer, key)


def _keras2_inbound_nodes(entry: dict, layer, where: str) -> list:
    """Keras 3's ``{args, kwargs}`` nodes as Keras 2's ``[[layer, node, tensor, kwargs], ...]`` lists."""
    nodes = []
    for node in entry.get("inbound_nodes", []):
        args, kwargs = node.get("args", ()), dict(node.get("kwargs", {}))
        if kwargs.get("mask", ...) is None:
            del kwargs["mask"]  # Keras 3 records the absent mask; Keras 2 never passed one
        # Keras 3 records the training flag it resolved while building and overrides it at run time; in a
        # Keras 2 file it would pin the layer (training=False: dropout never active), so it is left out.
        kwargs.pop("training", None)
        if not args:
            raise InputError(where, "is called without a positional argument, which Keras 2 cannot express")
        # Keras 2 passed one positional argument; tf_keras wrote the others by name (MultiHeadAttention's value).
        parameters = list(inspect.signature(layer.call).parameters)[1:len(args)]
        if len(parameters) != len(args) - 1:
            raise InputError(where, "is called with more positional arguments than it names, which Keras 2 cannot "
                                    "express")
        kwargs = {**dict(zip(parameters, args[1:])), **kwargs}
        inputs = args[0] if isinstance(args[0], (list, tuple)) else [args[0]]
        links = []
        for tensor in inputs:
            if not _is_keras_tensor(tensor):
                raise InputError(where, f"is called on a constant ({str(tensor)[:60]}), which Keras 2 cannot express")
            links.append([*tensor["config"]["keras_history"], _keras2_object(_keras2_tensors(kwargs), where)])
        nodes.append(links)
    return nodes


def _is_keras_tensor(value) -> bool:
    return isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"


def _keras2_tensors(value):
    """Tensors among a call's keyword arguments as Keras 2's ``[layer, node_index, tensor_index]``."""
    if _is_keras_tensor(value):
        return list(value["config"]["keras_history"])
    if isinstance(value, (list, tuple)):
        return [_keras2_tensors(v) for v in value]
    if isinstance(value, dict):
        return {k: _keras2_tensors(v) for k, v in value.items()}
    return value


def keras2_model_config(model: keras.Model) -> dict:
    """The model's architecture as Keras 2.1.2 wrote it: ``{"class_name": "Model" | "Sequential", "config": ...}``.

    A functional model becomes ``Model`` with Keras 2 ``inbound_nodes``; a
    ``Sequential`` becomes the bare list of layers (its input shape on the
    first layer), the form every Keras 2 release reads.
    """
    config = model.get_config()
    layers = {layer.name: layer for layer in model.layers}
    if isinstance(model, keras.Sequential):
        entries, batch_shape = [], None
        for entry in config["layers"]:
            if entry["class_name"] == "InputLayer":
                batch_shape = list(entry["config"]["batch_shape"])
                continue
            layer = layers[entry["config"]["name"]]
            class_name, layer_config = _keras2_layer(layer, entry["config"])
            if batch_shape is not None and not entries:
                layer_config = {"batch_input_shape": batch_shape, **layer_config}
            entries.append({"class_name": class_name, "config": layer_config})
        return {"class_name": "Sequential", "config": entries}
    if not all(k in config for k in ("layers", "input_layers", "output_layers")):
        raise InputError(f"model {model.name!r}", "is neither functional nor Sequential; Keras 2 cannot describe it")
    entries = []
    nested = {layer.name for layer in model.layers if isinstance(layer, keras.Model)}
    sequentials = {layer.name for layer in model.layers if isinstance(layer, keras.Sequential)}
    for entry in config["layers"]:
        layer = layers[entry["name"]]
        class_name, layer_config = _keras2_layer(layer, entry["config"])
        nodes = _shift_nested_calls(_keras2_inbound_nodes(entry, layer, f"layer {layer.name!r}"), nested, 1)
        if class_name == "MultiHeadAttention":
            layer_config.update(_keras2_attention_shapes(entry))
        entries.append({"class_name": class_name, "config": layer_config, "name": entry["name"],
                        "inbound_nodes": nodes})
    return {"class_name": "Model", "config": {
        "name": config["name"], "layers": entries,
        "input_layers": _keras2_endpoints(config["input_layers"]),
        "output_layers": _shift_nested_calls(_keras2_endpoints(config["output_layers"]), sequentials, 1)}}


def _keras2_attention_shapes(entry: dict) -> dict:
    """tf_keras's MultiHeadAttention builds its weights from the shapes of its first call, kept in its config."""
    node = (entry.get("inbound_nodes") or [{}])[0]
    call = dict(zip(("query", "value", "key"), node.get("args", ())), **node.get("kwargs", {}))
    if call.get("key") is None:
        call["key"] = call.get("value")
    return {f"{name}_shape": list(call[name]["config"]["shape"]) if _is_keras_tensor(call.get(name)) else None
            for name in ("query", "key", "value")}


def _keras2_layer(layer, config: dict) -> tuple:
    """``(class_name, config)`` of one layer (or nested model) in Keras 2 terms."""
    if isinstance(layer, keras.Model):
        nested = keras2_model_config(layer)
        return nested["class_name"], nested["config"]
    name = type(layer).__name__
    if name not in BUILTIN_CLASSES or not type(layer).__module__.startswith("keras."):
        raise InputError(f"layer {layer.name!r}", f"is a {name}, not one of Keras's built-in layers; Keras 2 "
                                                  "files hold only those")
    return name, _keras2_layer_config(layer, config)


def _keras2_endpoints(endpoints) -> list:
    # Keras 3 writes a single input or output as one [name, node, tensor] triple; Keras 2 always a list of them.
    if len(endpoints) == 3 and isinstance(endpoints[0], str):
        return [list(endpoints)]
    return [list(e) for e in endpoints]


def _keras2_document(model: keras.Model) -> dict:
    return {**keras2_model_config(model), "keras_version": keras.__version__, "backend": KERNEL_CONVENTION}


def model_to_yaml(model: keras.Model) -> str:
    """The architecture as Keras 2 ``to_yaml()`` text, in plain YAML that ``yaml.safe_load`` reads."""
    return yaml.safe_dump(_keras2_document(model), default_flow_style=None, sort_keys=True)


def model_to_json(model: keras.Model) -> str:
    """The architecture as Keras 2 ``to_json()`` text (the document ``model_to_yaml`` writes)."""
    return json.dumps(_keras2_document(model))
