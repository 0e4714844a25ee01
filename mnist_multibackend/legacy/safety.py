"""What an untrusted Keras 2 file may name, and how its text and HDF5 are opened.

Class names are resolved only among Keras's own built-in classes (never
``Lambda``, custom objects or code); YAML is parsed by a ``SafeLoader`` that
knows only ``!!python/tuple`` and ``!!python/unicode``; structures are capped in
size; and any problem is one ``InputError`` line.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import h5py
import keras
import numpy as np
import yaml

from ..errors import InputError, first_line

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


def parse_json(text, source, what: str):
    """A JSON attribute of an HDF5 file (``model_config``, ``training_config``) as plain dicts and lists."""
    if isinstance(text, (bytes, np.bytes_)):
        text = bytes(text).decode("utf-8", errors="replace")
    try:
        return json.loads(str(text), object_hook=_json_object)
    except (ValueError, RecursionError) as err:
        raise InputError(source, f"{what} is not valid JSON ({err})") from None


# ---------------------------------------------------------------------------
# Opening untrusted files
# ---------------------------------------------------------------------------

def existing_file(path) -> Path:
    """``path`` as a ``Path``, or ``InputError`` if it is not an existing regular file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "is not a file")
    return path


def read_text_file(path) -> str:
    """The UTF-8 text of a file; ``InputError`` names the file."""
    path = existing_file(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


@contextlib.contextmanager
def open_h5(path):
    """Open an HDF5 file for reading; what h5py raises on a damaged one becomes an ``InputError`` naming it."""
    path = existing_file(path)
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
