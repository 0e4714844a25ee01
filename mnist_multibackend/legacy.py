"""Keras 2 files, read and written by Keras 3 on any backend.

Three formats, as the original project (Keras 2.1.2) wrote them:

- full model HDF5 (``model.save``): attributes ``model_config`` and
  ``training_config`` (JSON), group ``model_weights``, group
  ``optimizer_weights`` (the Adam state) — ``load_legacy_h5`` / ``save_legacy_h5``;
- architecture YAML (``model.to_yaml()``) — ``model_from_yaml`` / ``model_to_yaml``;
- weights-only HDF5 (``model.save_weights``): attribute ``layer_names``, one
  group per layer with a ``weight_names`` attribute — ``load_weights_h5`` /
  ``save_weights_h5``.

Every file is untrusted input. Layer, initializer, regularizer and constraint
class names are resolved only among Keras's own built-in classes (never
``Lambda``, custom objects or code), Keras deserializes in safe mode, YAML is
parsed by a ``SafeLoader`` that knows only ``!!python/tuple`` and
``!!python/unicode``, and any problem is one ``InputError`` line.

What is written follows Keras 2.1.2's dialect (``batch_input_shape``,
``inbound_nodes`` lists, ``{class_name, config}`` objects, ``lr``/``decay``,
Adam state as ``iterations`` then first then second moments) so that Keras 2
itself, e.g. ``tf_keras``, reads it.

Import this module only after ``runtime.start()`` has chosen the backend.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path

import h5py
import keras
import numpy as np
import yaml
# Keras 3's own reader of Keras 2 weight groups (topological loading with shape
# checks, long attributes split into chunks) is reused as it stands. Its model
# and optimizer loading is not: it resolves class names among all of
# keras.layers (Lambda included), rejects Keras 2's Adam config and drops the
# optimizer state.
from keras.src.legacy.saving.legacy_h5_format import (load_attributes_from_hdf5_group,
                                                      load_weights_from_hdf5_group,
                                                      save_attributes_to_hdf5_group)
from keras.src.saving.serialization_lib import SafeModeScope

from .atomic import atomic_path, write_text
from .errors import InputError, first_line

# The file names the original project wrote, and `mnist-mb train --legacy-artifacts` writes again.
H5_NAME = "MNIST_keras_CNN.h5"
YAML_NAME = "MNIST_keras_CNN.yaml"
WEIGHTS_NAME = "MNIST_keras_w_CNN.h5"

# Keras 2 readers take this attribute as the convolution-kernel convention of the
# weights (they flip kernels saved by Theano). Keras 3 kernels follow TensorFlow's
# convention on every backend, so a file written on JAX says "tensorflow" too.
KERNEL_CONVENTION = "tensorflow"
CONV_LAYERS = frozenset({"Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose", "Conv3DTranspose", "ConvLSTM2D",
                         "SeparableConv1D", "SeparableConv2D", "DepthwiseConv2D"})

# Keras 2 defaults: Adam's epsilon `None` meant K.epsilon().
KERAS2_EPSILON = 1e-7


# ---------------------------------------------------------------------------
# Which classes a file may name
# ---------------------------------------------------------------------------

# Built-in layers that run code from the file or from outside Keras.
CODE_LAYERS = frozenset({"Lambda", "TFSMLayer", "JaxLayer", "FlaxLayer", "TorchModuleWrapper", "Layer"})
# "module" values a Keras 3 or tf_keras config may carry next to a class name.
KERAS_MODULES = frozenset({"keras", "keras.layers", "keras.models", "keras.initializers", "keras.regularizers",
                           "keras.constraints", "keras.dtype_policies"})
# Markers inside Keras 3 configs that name no class.
CONFIG_MARKERS = frozenset({"__keras_tensor__"})
MAX_CONFIG_NODES = 1_000_000  # YAML aliases can make a small file a huge (or cyclic) structure


def _builtin_class_names() -> frozenset:
    names = {"Model", "Functional", "Sequential"}
    for module, base in ((keras.layers, keras.layers.Layer), (keras.initializers, keras.initializers.Initializer),
                         (keras.regularizers, keras.regularizers.Regularizer),
                         (keras.constraints, keras.constraints.Constraint),
                         (keras.dtype_policies, keras.dtype_policies.DTypePolicy)):
        for name in dir(module):
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, base) and obj.__module__.startswith("keras."):
                names.add(name)
    return frozenset(names - CODE_LAYERS)


BUILTIN_CLASSES = _builtin_class_names()


def check_config_classes(config, source) -> None:
    """Refuse a config that names anything but Keras's own built-in classes.

    Walks every nested dict and list; raises ``InputError`` naming the layer
    and the first class that is not a built-in layer, initializer,
    regularizer, constraint or dtype policy (``Lambda`` and custom objects are
    refused). Nothing is imported or built here.
    """
    budget = [MAX_CONFIG_NODES]

    def visit(node, where):
        budget[0] -= 1
        if budget[0] < 0:
            raise InputError(source, "model configuration is too large or refers to itself")
        if isinstance(node, dict):
            if "class_name" in node:
                config = node["config"] if isinstance(node.get("config"), dict) else {}
                label = node.get("name", config.get("name"))  # layers carry a name; initializers do not
                if isinstance(label, str):
                    where = f"layer {label!r}"
                _check_class(node, where, source)
            for value in node.values():
                visit(value, where)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value, where)

    try:
        visit(config, "the model")
    except RecursionError:
        raise InputError(source, "model configuration is nested too deeply or refers to itself") from None


def _check_class(node: dict, where: str, source) -> None:
    name = node["class_name"]
    if not isinstance(name, str) or (name not in BUILTIN_CLASSES and name not in CONFIG_MARKERS):
        raise InputError(source, f"{where} names class {name!r}, which is not one of Keras's built-in classes; "
                                 "only those load (no Lambda, custom objects or code)")
    module = node.get("module")
    if module is not None and module not in KERAS_MODULES:
        raise InputError(source, f"{where} takes {name!r} from module {module!r}; only Keras's own classes load")
    if node.get("registered_name") not in (None, name):
        raise InputError(source, f"{where} names the registered object {node['registered_name']!r}; "
                                 "custom objects do not load")


# ---------------------------------------------------------------------------
# Parsing untrusted text
# ---------------------------------------------------------------------------

class Keras2YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus the two harmless tags Keras 2's ``to_yaml`` wrote.

    ``!!python/tuple`` becomes a tuple and ``!!python/unicode`` a string; any
    other ``!!python/...`` tag (``object/apply``, ``name``, ``module`` ...)
    stops the parse with ``RefusedYamlTag`` before anything is constructed.
    """


class RefusedYamlTag(yaml.YAMLError):
    def __init__(self, tag: str, mark):
        line = f" at line {mark.line + 1}" if mark is not None else ""
        super().__init__(f"refused YAML tag {tag!r}{line}: only !!python/tuple and !!python/unicode are "
                         "accepted; nothing in the file was run")


def _construct_tuple(loader, node):
    return tuple(loader.construct_sequence(node, deep=True))


def _refuse_python_tag(loader, suffix, node):
    raise RefusedYamlTag(node.tag, node.start_mark)


Keras2YamlLoader.add_constructor("tag:yaml.org,2002:python/tuple", _construct_tuple)
Keras2YamlLoader.add_constructor("tag:yaml.org,2002:python/unicode", Keras2YamlLoader.construct_yaml_str)
Keras2YamlLoader.add_multi_constructor("tag:yaml.org,2002:python/", _refuse_python_tag)


def parse_keras2_yaml(text: str, source="YAML"):
    """Parse ``to_yaml()`` output of any Keras 2 release into plain dicts, lists, tuples and scalars."""
    loader = Keras2YamlLoader(text)
    try:
        return loader.get_single_data()
    except RefusedYamlTag as err:
        raise InputError(source, str(err)) from None
    except RecursionError:
        raise InputError(source, "YAML is nested too deeply") from None
    except Exception as err:  # noqa: BLE001 - YAMLError, or a scalar no constructor accepts (a bad date ...)
        raise InputError(source, f"not valid YAML ({' '.join(str(err).split())[:300]})") from None
    finally:
        loader.dispose()


def _json_object(obj: dict):
    # tf.keras wrote tuples and TensorShapes as tagged objects.
    if obj.get("class_name") == "__tuple__" and "items" in obj:
        return tuple(obj["items"])
    if obj.get("class_name") == "TensorShape" and "items" in obj:
        return obj["items"]
    return obj


def _parse_json(text, source, what: str):
    if isinstance(text, (bytes, np.bytes_)):
        text = bytes(text).decode("utf-8", errors="replace")
    try:
        return json.loads(str(text), object_hook=_json_object)
    except (ValueError, RecursionError) as err:
        raise InputError(source, f"{what} is not valid JSON ({err})") from None


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
}


def _keras3_layer(layer: dict, source, *, sequential_first=False) -> list:
    """One Keras 2 layer entry as Keras 3 reads it; the first layer of a Sequential may become two."""
    if not isinstance(layer, dict):
        raise InputError(source, f"a layer entry is not a {{class_name, config}} mapping: {str(layer)[:120]}")
    # tf_keras adds "module"/"registered_name" (checked already); without them Keras 3 takes its Keras 2
    # path, which also turns BatchNormalization's axis [3] into 3.
    layer = {k: v for k, v in layer.items() if k not in ("module", "registered_name")}
    class_name = layer.get("class_name")
    if class_name in ("Model", "Functional", "Sequential"):
        return [{**layer, **_keras3_model_config(layer, source)}]
    if not isinstance(layer.get("config"), dict):
        raise InputError(source, f"layer entry {str(layer)[:120]} has no config mapping")
    config = dict(layer["config"])
    name = config.get("name", layer.get("name"))
    for option, neutral in KERAS2_ONLY_OPTIONS.items():
        if option in config and (neutral is ANY or config[option] == neutral):
            del config[option]
    batch_input_shape = config.pop("batch_input_shape", None)
    if class_name == "InputLayer":
        if batch_input_shape is not None:
            config["batch_shape"] = list(batch_input_shape)
        return [{**layer, "config": config}]
    entries = []
    if sequential_first and batch_input_shape is not None:
        # Keras 2 kept a Sequential's input shape on its first layer; Keras 3 wants an InputLayer.
        entries.append({"class_name": "InputLayer", "config": {
            "batch_shape": list(batch_input_shape), "dtype": config.get("dtype") or "float32",
            "name": f"{name}_input"}})
    entries.append({**layer, "config": config})
    return entries


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
        return {"class_name": "Functional", "config": {
            "name": config.get("name") or "model", "trainable": config.get("trainable", True),
            "layers": layers, "input_layers": config["input_layers"], "output_layers": config["output_layers"]}}
    raise InputError(source, f"top-level class is {class_name!r}; expected Model, Functional or Sequential")


def model_from_keras2_config(model_config, source="model config") -> keras.Model:
    """Build a Keras 3 model (uncompiled, freshly initialised) from a Keras 2 ``{class_name, config}`` dict."""
    if not isinstance(model_config, dict) or "class_name" not in model_config:
        raise InputError(source, "not a Keras model configuration (no 'class_name' at the top)")
    check_config_classes(model_config, source)
    try:
        keras3 = _keras3_model_config(model_config, source)
        cls = keras.Sequential if keras3["class_name"] == "Sequential" else keras.Model
        # Safe mode even if the process enabled unsafe deserialization elsewhere.
        with SafeModeScope(True):
            return cls.from_config(keras3["config"])
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - malformed, or whatever Keras raises: not a model description
        raise InputError(source, f"not a loadable Keras 2 model ({first_line(err, limit=300)})") from None


def model_from_yaml(text: str, source="YAML") -> keras.Model:
    """The architecture in a Keras 2 ``to_yaml()`` text (functional ``Model`` or ``Sequential``), uncompiled."""
    return model_from_keras2_config(parse_keras2_yaml(text, source), source)


def load_yaml_file(path) -> keras.Model:
    """``model_from_yaml`` on a file; ``InputError`` names the file."""
    return model_from_yaml(_read_text(path), source=path)


def _read_text(path) -> str:
    path = _existing_file(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def _existing_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "is not a file")
    return path


# ---------------------------------------------------------------------------
# Keras 3 model -> Keras 2 config
# ---------------------------------------------------------------------------

# Options Keras 2.1 did not have. At the value given they change nothing, so
# they are left out and every Keras 2 release reads the layer.
NEWER_OPTIONS_AT_DEFAULT = {
    "groups": 1, "synchronized": False, "renorm": False, "renorm_clipping": None, "optional": False,
    "ragged": False, "quantization_config": None, "lora_rank": None, "lora_alpha": None,
}
# Options no Keras 2 release knows: a model that uses them cannot be written.
KERAS3_ONLY_OPTIONS = frozenset({"quantization_config", "lora_rank", "lora_alpha"})
# Keras 2.1's VarianceScaling called the truncated normal "normal" (tf.keras reads both).
KERAS2_DISTRIBUTIONS = {"truncated_normal": "normal"}


def _keras2_object(value, where: str):
    """A Keras 3 serialized object (initializer, regularizer ...) as Keras 2's ``{class_name, config}``."""
    if isinstance(value, dict):
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
        if key == "data_format" and isinstance(layer, keras.layers.Flatten) and value == "channels_last":
            continue  # Keras 2.1's Flatten had no data_format and always flattened channels-last
        if key == "dtype":
            value = _keras2_dtype(value, where)
        elif key == "batch_shape":
            key, value = "batch_input_shape", list(value)
        out[key] = _keras2_object(value, where)
    return out


def _keras2_inbound_nodes(entry: dict, where: str) -> list:
    """Keras 3's ``{args, kwargs}`` nodes as Keras 2's ``[[layer, node, tensor, kwargs], ...]`` lists."""
    nodes = []
    for node in entry.get("inbound_nodes", []):
        args, kwargs = node.get("args", ()), dict(node.get("kwargs", {}))
        if kwargs.get("mask", ...) is None:
            del kwargs["mask"]  # Keras 3 records the absent mask; Keras 2 never passed one
        # Keras 3 records the training flag it resolved while building and overrides it at run time; in a
        # Keras 2 file it would pin the layer (training=False: dropout never active), so it is left out.
        kwargs.pop("training", None)
        if len(args) != 1:
            raise InputError(where, "is called with more than one positional argument, which Keras 2 cannot express")
        inputs = args[0] if isinstance(args[0], (list, tuple)) else [args[0]]
        links = []
        for tensor in inputs:
            if not (isinstance(tensor, dict) and tensor.get("class_name") == "__keras_tensor__"):
                raise InputError(where, f"is called on a constant ({str(tensor)[:60]}), which Keras 2 cannot express")
            layer_name, node_index, tensor_index = tensor["config"]["keras_history"]
            links.append([layer_name, node_index, tensor_index, _keras2_object(kwargs, where)])
        nodes.append(links)
    return nodes


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
    for entry in config["layers"]:
        layer = layers[entry["name"]]
        class_name, layer_config = _keras2_layer(layer, entry["config"])
        entries.append({"class_name": class_name, "config": layer_config, "name": entry["name"],
                        "inbound_nodes": _keras2_inbound_nodes(entry, f"layer {layer.name!r}")})
    return {"class_name": "Model", "config": {
        "name": config["name"], "layers": entries,
        "input_layers": _keras2_endpoints(config["input_layers"]),
        "output_layers": _keras2_endpoints(config["output_layers"])}}


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


# ---------------------------------------------------------------------------
# Weights: Keras 2 layout
# ---------------------------------------------------------------------------

def _keras2_weights(layer) -> list:
    # Keras 2 saved and loaded trainable weights first, then the others.
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _names_attribute(group, name: str, values) -> None:
    # Keras 2 wrote fixed-length byte strings, and an empty float array for "no names".
    save_attributes_to_hdf5_group(group, name, np.array([v.encode("utf8") for v in values], dtype="S")
                                  if values else np.array([]))


def write_weights_group(group: h5py.Group, model: keras.Model) -> None:
    """Keras 2's layout: ``layer_names``, then one group per layer holding its ``weight_names`` datasets."""
    _names_attribute(group, "layer_names", [layer.name for layer in model.layers])
    group.attrs["backend"] = KERNEL_CONVENTION.encode("utf8")
    group.attrs["keras_version"] = keras.__version__.encode("utf8")
    for layer in model.layers:
        layer_group = group.create_group(layer.name)
        weights = _keras2_weights(layer)
        # Keras 2 named a weight after its own layer and itself ("conv0/kernel:0"), also inside nested models.
        names = ["/".join(w.path.split("/")[-2:]) + ":0" for w in weights]
        _names_attribute(layer_group, "weight_names", names)
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
        layer_names = load_attributes_from_hdf5_group(group, "layer_names")
        if not layer_names:
            raise InputError(source, "no 'layer_names' attribute: not a Keras 2 weights file")
        load_weights_from_hdf5_group(group, model)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - a missing group, wrong count or shape: the weights do not fit
        raise InputError(source, f"weights do not fit the model ({first_line(err, limit=300)})") from None


@contextlib.contextmanager
def _open_h5(path):
    path = _existing_file(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InputError(path, f"not an HDF5 file ({first_line(err, limit=300)})") from None
    try:
        yield f
    except (OSError, KeyError, TypeError, ValueError) as err:
        # h5py reports damaged or unexpected contents this way
        raise InputError(path, f"damaged or unexpected HDF5 contents ({first_line(err, limit=300)})") from None
    finally:
        f.close()


def save_weights_h5(model: keras.Model, path) -> None:
    """Write the model's weights as Keras 2's ``save_weights`` did, under any name (``.h5`` included)."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            write_weights_group(f, model)


def load_weights_h5(model: keras.Model, path) -> keras.Model:
    """Load a Keras 2 weights file (or the weights of a Keras 2 full-model file) into ``model``."""
    with _open_h5(path) as f:
        group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        read_weights_group(group, model, path)
    return model


# ---------------------------------------------------------------------------
# Training config and Adam state
# ---------------------------------------------------------------------------

# Optimizer options other Keras 2 releases recorded that change nothing at these values.
NEUTRAL_OPTIMIZER_OPTIONS = {
    "name": ANY, "jit_compile": ANY, "is_legacy_optimizer": ANY, "weight_decay": None, "use_ema": False,
    "ema_momentum": ANY, "ema_overwrite_frequency": None, "global_clipnorm": None, "clipnorm": None,
    "clipvalue": None, "amsgrad": False, "loss_scale_factor": None, "gradient_accumulation_steps": None,
}


def _as_float32_value(value: float) -> float:
    """Keras 2 stored lr and betas in float32 (0.8999999761581421); give back the number that was meant (0.9)."""
    value = float(value)
    single = np.float32(value)
    return float(str(single)) if float(single) == value and np.isfinite(single) else value


def adam_from_keras2(optimizer_config, source) -> keras.optimizers.Adam:
    """Keras 3 Adam from a Keras 2 ``optimizer_config``: ``lr`` -> ``learning_rate``, ``decay`` -> a schedule.

    Keras 2 decayed Adam's rate as ``lr / (1 + decay * iterations)``, which is
    ``InverseTimeDecay(lr, decay_steps=1, decay_rate=decay)`` in Keras 3.
    """
    if not isinstance(optimizer_config, dict) or not isinstance(optimizer_config.get("config"), dict):
        raise InputError(source, "training_config has no optimizer_config {class_name, config}")
    class_name = str(optimizer_config.get("class_name"))
    if re.split(r"[>.]", class_name)[-1] != "Adam":
        raise InputError(source, f"optimizer {class_name!r}: only Adam's configuration and state are restored; "
                                 "load with compile=False and compile the model yourself")
    config = dict(optimizer_config["config"])
    lr = config.pop("learning_rate", None)
    lr = config.pop("lr", 0.001) if lr is None else lr
    if isinstance(lr, dict):
        raise InputError(source, f"learning-rate schedule {lr.get('class_name')!r} is not supported")
    try:
        decay = float(config.pop("decay", None) or 0.0)
        epsilon = config.pop("epsilon", None)
        settings = {"beta_1": _as_float32_value(config.pop("beta_1", 0.9)),
                    "beta_2": _as_float32_value(config.pop("beta_2", 0.999)),
                    "epsilon": KERAS2_EPSILON if epsilon is None else float(epsilon),
                    "amsgrad": bool(config.pop("amsgrad", False))}
        for clip in ("clipnorm", "clipvalue"):
            if config.get(clip) is not None:
                settings[clip] = float(config.pop(clip))
        for option, neutral in NEUTRAL_OPTIMIZER_OPTIONS.items():
            if option in config and (neutral is ANY or config[option] == neutral):
                del config[option]
        if config:
            raise InputError(source, f"Adam options {sorted(config)} are not supported")
        if decay < 0 or not math.isfinite(decay):
            raise InputError(source, f"Adam decay must be a non-negative number. Received: {decay}")
        learning_rate = _as_float32_value(lr)
        if decay:
            learning_rate = keras.optimizers.schedules.InverseTimeDecay(learning_rate, decay_steps=1,
                                                                        decay_rate=_as_float32_value(decay))
        return keras.optimizers.Adam(learning_rate=learning_rate, **settings)
    except (TypeError, ValueError) as err:
        raise InputError(source, f"Adam settings not usable ({first_line(err, limit=300)})") from None


def _keras2_metric(metric, source):
    if isinstance(metric, str):
        return metric
    if isinstance(metric, dict) and metric.get("class_name") == "MeanMetricWrapper":
        config = metric.get("config") or {}  # tf.keras wrapped the metric function it resolved
        if config.get("name") in ("accuracy", "acc"):
            return config["name"]
        if isinstance(config.get("fn"), str):
            return config["fn"]
    if isinstance(metric, list):
        return [_keras2_metric(m, source) for m in metric]
    if isinstance(metric, dict) and "class_name" not in metric:
        return {k: _keras2_metric(v, source) for k, v in metric.items()}
    raise InputError(source, f"metric {str(metric)[:80]} is not supported; load with compile=False")


def compile_args_from_keras2(training_config, model: keras.Model, source) -> dict:
    """``model.compile`` arguments from a Keras 2 ``training_config`` (optimizer, loss, metrics, loss_weights)."""
    if not isinstance(training_config, dict):
        raise InputError(source, "training_config is not a mapping")
    if training_config.get("sample_weight_mode") is not None:
        raise InputError(source, f"sample_weight_mode {training_config['sample_weight_mode']!r} has no Keras 3 "
                                 "equivalent; load with compile=False")
    loss = training_config.get("loss")
    flat_losses = loss.values() if isinstance(loss, dict) else loss if isinstance(loss, list) else [loss]
    if not all(isinstance(name, str) for name in flat_losses):
        raise InputError(source, f"loss {str(loss)[:80]} is not a built-in loss name; load with compile=False")
    args = {"optimizer": adam_from_keras2(training_config.get("optimizer_config"), source), "loss": loss,
            "loss_weights": training_config.get("loss_weights")}
    for key in ("metrics", "weighted_metrics"):
        metrics = training_config.get(key)
        if metrics is not None:
            metrics = _keras2_metric(metrics, source)
            if len(model.outputs) == 1 and isinstance(metrics, list) and len(metrics) == 1 \
                    and isinstance(metrics[0], list):
                metrics = metrics[0]  # tf.keras wrote one list per output
            args[key] = metrics
    return args


def compile_from_keras2(model: keras.Model, training_config, source) -> keras.Model:
    """Compile ``model`` as a Keras 2 ``training_config`` says (see ``compile_args_from_keras2``)."""
    args = compile_args_from_keras2(training_config, model, source)
    try:
        model.compile(**args)
    except (TypeError, ValueError) as err:
        raise InputError(source, f"training_config not usable ({first_line(err, limit=300)})") from None
    return model


# Names Keras 2 releases gave their optimizer variables.
_ITERATIONS = re.compile(r"(^|/)iter(ation|ations)?(:0)?$")
_HYPERPARAMETER = re.compile(r"(^|/)(lr|learning_rate|beta_1|beta_2|decay|epsilon)(:0)?$")
_SLOTS = (("vhat", re.compile(r"(/vhat(:0)?$|/vhat/|_velocity_hat$)")),
          ("m", re.compile(r"(/m(:0)?$|/m/|_momentum$)")),
          ("v", re.compile(r"(/v(:0)?$|/v/|_velocity$)")))
_NUMBERED = re.compile(r"Variable(?:_(\d+))?(:0)?$")


def _adam_slots(entries, n: int, source) -> dict:
    """Split Keras 2 optimizer weights into ``{"m": [...], "v": [...], "vhat": [...]}``, each in weight order.

    Keras 2.0-2.2 numbered the moments (``training/Adam/Variable_N:0``: all
    first moments, then all second ones, then amsgrad's); tf.keras named them
    after the weight (``.../m:0``, ``Adam/m/...``).
    """
    named = {kind: [a for name, a in entries if pattern.search(name)] for kind, pattern in _SLOTS}
    if sum(map(len, named.values())) == len(entries):
        return named
    numbers = [_NUMBERED.search(name) for name, _ in entries]
    if all(numbers):  # sort numerically: Variable_10 comes after Variable_9, not after Variable_1
        entries = [e for _, e in sorted(zip([int(m.group(1) or 0) for m in numbers], entries), key=lambda p: p[0])]
    arrays = [a for _, a in entries]
    if n == 0 or len(arrays) not in (2 * n, 3 * n):
        raise InputError(source, f"optimizer_weights holds {len(arrays)} moment arrays; Adam over {n} trainable "
                                 f"weights needs {2 * n} (or {3 * n} with amsgrad)")
    return {"m": arrays[:n], "v": arrays[n:2 * n], "vhat": arrays[2 * n:]}


def restore_adam_state(model: keras.Model, group: h5py.Group, source) -> None:
    """Put the Keras 2 Adam state (iterations and moments) into ``model.optimizer``, building it first."""
    optimizer = model.optimizer
    names = load_attributes_from_hdf5_group(group, "weight_names")
    entries = []
    for name in names:
        if name not in group or not isinstance(group[name], h5py.Dataset):
            raise InputError(source, f"optimizer_weights lists {name!r} but holds no such array")
        entries.append((name, np.asarray(group[name])))
    if not entries:
        return
    iterations = [a for name, a in entries if _ITERATIONS.search(name)]
    if len(iterations) != 1 or iterations[0].shape != () or not _ITERATIONS.search(entries[0][0]):
        raise InputError(source, f"optimizer_weights does not start with Adam's iteration count: {names[:3]}")
    moments = [(name, a) for name, a in entries[1:] if not (a.shape == () and _HYPERPARAMETER.search(name))]
    # Keras 2's order of trainable weights: layer by layer, as the optimizer saw them.
    weights = [w for layer in model.layers for w in layer.trainable_weights]
    optimizer.build(model.trainable_variables)
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    if not moments:  # saved before the optimizer took a step
        optimizer.iterations.assign(int(iterations[0]))
        return
    slots = _adam_slots(moments, len(weights), source)
    targets = {"m": optimizer._momentums, "v": optimizer._velocities,
               "vhat": getattr(optimizer, "_velocity_hats", None) or []}
    if slots["vhat"] and all(a.shape == (1,) for a in slots["vhat"]):
        slots["vhat"] = []  # Keras 2.1.3+ kept (1,) placeholders when amsgrad was off
    if slots["vhat"] and not optimizer.amsgrad:
        raise InputError(source, "optimizer_weights holds amsgrad state but the config has amsgrad off")
    for kind in ("m", "v") + (("vhat",) if optimizer.amsgrad else ()):
        arrays = slots[kind]
        if len(arrays) != len(weights):
            raise InputError(source, f"optimizer_weights holds {len(arrays)} '{kind}' arrays for "
                                     f"{len(weights)} trainable weights")
        for weight, array in zip(weights, arrays):
            if tuple(array.shape) != tuple(weight.shape):
                raise InputError(source, f"Adam '{kind}' for {weight.path} has shape {array.shape}; the weight "
                                         f"has {tuple(weight.shape)}")
            targets[kind][index[id(weight)]].assign(array)
    optimizer.iterations.assign(int(iterations[0]))


def keras2_training_config(model: keras.Model) -> dict | None:
    """The compiled model's training config as Keras 2.1.2 wrote it (Adam with ``lr`` and ``decay``); ``None``
    if the model is not compiled."""
    if not getattr(model, "compiled", False) or model.optimizer is None:
        return None
    optimizer = model.optimizer
    where = f"optimizer of model {model.name!r}"
    if type(optimizer) is not keras.optimizers.Adam:
        raise InputError(where, f"is {type(optimizer).__name__}; only Adam is written in the Keras 2 layout")
    config = optimizer.get_config()
    lr, decay = config.pop("learning_rate"), 0.0
    if isinstance(lr, dict):
        schedule = keras.optimizers.schedules.deserialize(lr)
        if not (isinstance(schedule, keras.optimizers.schedules.InverseTimeDecay) and schedule.decay_steps == 1
                and not schedule.staircase):
            raise InputError(where, f"learning-rate schedule {type(schedule).__name__} has no Keras 2 form "
                                    "(only lr / (1 + decay * iterations) has)")
        lr, decay = schedule.initial_learning_rate, schedule.decay_rate
    adam = {"lr": float(lr), "beta_1": float(config.pop("beta_1")), "beta_2": float(config.pop("beta_2")),
            "epsilon": float(config.pop("epsilon")), "decay": float(decay)}
    if config.pop("amsgrad"):
        adam["amsgrad"] = True  # Keras 2.1.2 had no amsgrad option, so it appears only when on
    for clip in ("clipnorm", "clipvalue"):
        if config.get(clip) is not None:
            adam[clip] = float(config.pop(clip))
    leftover = {k: v for k, v in config.items() if not (k in NEUTRAL_OPTIMIZER_OPTIONS and (
        NEUTRAL_OPTIMIZER_OPTIONS[k] is ANY or v == NEUTRAL_OPTIMIZER_OPTIONS[k]))}
    if leftover:
        raise InputError(where, f"uses {leftover}, which Keras 2's Adam lacks")
    compile_config = model.get_compile_config() or {}
    loss, metrics = compile_config.get("loss"), compile_config.get("metrics")
    for what, value in (("loss", loss), ("metrics", metrics)):
        if not _only_names(value):
            raise InputError(where.replace("optimizer", what), f"{str(value)[:80]} is not a built-in name; Keras 2 "
                                                               "files record losses and metrics by name")
    return {"optimizer_config": {"class_name": "Adam", "config": adam}, "loss": loss, "metrics": metrics or [],
            "loss_weights": compile_config.get("loss_weights"), "sample_weight_mode": None}


def _only_names(value) -> bool:
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, (list, tuple)):
        return all(_only_names(v) for v in value)
    if isinstance(value, dict) and "class_name" not in value:
        return all(_only_names(v) for v in value.values())
    return False


def write_adam_state(f: h5py.File, model: keras.Model) -> None:
    """Keras 2.1.2's ``optimizer_weights``: ``Adam/iterations:0``, then ``training/Adam/Variable_N:0`` holding
    all first moments, then all second moments (then amsgrad's maxima), in trainable-weight order."""
    optimizer = model.optimizer
    if not optimizer.built:
        return  # no step taken yet: Keras 2 wrote no optimizer weights either
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    weights = [w for layer in model.layers for w in layer.trainable_weights]
    slots = [optimizer._momentums, optimizer._velocities] + ([optimizer._velocity_hats] if optimizer.amsgrad else [])
    if any(len(slot) != len(index) for slot in slots):
        raise InputError(f"optimizer of model {model.name!r}", "was built for other weights than the model's")
    arrays = [keras.ops.convert_to_numpy(slot[index[id(w)]]) for slot in slots for w in weights]
    names = ["Adam/iterations:0"] + [f"training/Adam/Variable{'' if i == 0 else f'_{i}'}:0"
                                     for i in range(len(arrays))]
    group = f.create_group("optimizer_weights")
    _names_attribute(group, "weight_names", names)
    group.create_dataset(names[0], data=np.int64(keras.ops.convert_to_numpy(optimizer.iterations)))
    for name, array in zip(names[1:], arrays):
        group.create_dataset(name, data=array)


# ---------------------------------------------------------------------------
# Full-model HDF5
# ---------------------------------------------------------------------------

def load_legacy_h5(path, compile: bool = True) -> keras.Model:
    """A Keras 2 ``model.save()`` file: architecture, weights and, with ``compile``, the training config
    (Adam, loss, metrics) and the Adam state (iterations and moments), so training resumes where it stopped.

    Raises ``InputError`` (one line naming the file) for anything that is not such a file.
    """
    with _open_h5(path) as f:
        if "model_config" not in f.attrs:
            hint = (": it holds weights only; pair it with the architecture YAML (load_weights_h5, or "
                    "mnist-mb legacy import ARCH.yaml --weights FILE)"
                    if "layer_names" in f.attrs else "")
            raise InputError(path, f"no model_config attribute, so not a Keras 2 full-model file{hint}")
        model = model_from_keras2_config(_parse_json(f.attrs["model_config"], path, "model_config"), path)
        if "model_weights" not in f or not isinstance(f["model_weights"], h5py.Group):
            raise InputError(path, "no model_weights group")
        read_weights_group(f["model_weights"], model, path)
        if not compile or "training_config" not in f.attrs:
            return model
        compile_from_keras2(model, _parse_json(f.attrs["training_config"], path, "training_config"), path)
        if "optimizer_weights" in f:
            restore_adam_state(model, f["optimizer_weights"], path)
    return model


def save_legacy_h5(model: keras.Model, path) -> None:
    """Write ``model`` as Keras 2.1.2's ``model.save()`` did: Keras 2 architecture, weights and, when the model
    is compiled with Adam, its training config and Adam state."""
    model_config = keras2_model_config(model)
    training_config = keras2_training_config(model)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["keras_version"] = keras.__version__.encode("utf8")
            f.attrs["backend"] = KERNEL_CONVENTION.encode("utf8")
            f.attrs["model_config"] = json.dumps(model_config).encode("utf8")
            if training_config is not None:
                f.attrs["training_config"] = json.dumps(training_config).encode("utf8")
            write_weights_group(f.create_group("model_weights"), model)
            if training_config is not None:
                write_adam_state(f, model)


# ---------------------------------------------------------------------------
# What the command line calls
# ---------------------------------------------------------------------------

def import_legacy(source, weights=None) -> keras.Model:
    """A model from Keras 2 files: a full-model ``.h5``, or an architecture ``.yaml`` with a weights ``.h5``."""
    source = Path(source)
    if source.suffix.lower() in (".yaml", ".yml"):
        if weights is None:
            raise InputError(source, "a YAML file holds the architecture only; give its weights with --weights")
        return load_weights_h5(load_yaml_file(source), weights)
    if weights is not None:
        raise InputError(weights, "--weights goes with a YAML architecture; a full-model .h5 has its own weights")
    return load_legacy_h5(source)


def export_legacy(model: keras.Model, h5=None, yaml_path=None, weights=None) -> list:
    """Write the Keras 2 files that are asked for; returns their paths."""
    written = []
    if h5 is not None:
        save_legacy_h5(model, h5)
        written.append(Path(h5))
    if yaml_path is not None:
        write_text(yaml_path, model_to_yaml(model))
        written.append(Path(yaml_path))
    if weights is not None:
        save_weights_h5(model, weights)
        written.append(Path(weights))
    return written


def write_legacy_artifacts(model: keras.Model, folder) -> list:
    """The original project's three files, under its names, in ``folder``."""
    folder = Path(folder)
    return export_legacy(model, h5=folder / H5_NAME, yaml_path=folder / YAML_NAME, weights=folder / WEIGHTS_NAME)
