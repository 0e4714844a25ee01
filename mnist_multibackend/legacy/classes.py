"""What an untrusted Keras 2 (or Keras 3) config may name: Keras's own built-in classes only.

Class names are resolved only among Keras's built-in layers, initializers,
regularizers, constraints and dtype policies (never ``Lambda``, custom objects
or code). Nothing is imported or built while checking.
"""

from __future__ import annotations

import keras

from ..errors import InputError
from .recurrent import CUDNN_EQUIVALENTS
from .safety import MAX_CONFIG_NODES

# Built-in layers that run code from the file or from outside Keras.
CODE_LAYERS = frozenset({"Lambda", "TFSMLayer", "JaxLayer", "FlaxLayer", "TorchModuleWrapper", "Layer"})
# "module" values a Keras 3 or tf_keras config may carry next to a class name.
KERAS_MODULES = frozenset({"keras", "keras.layers", "keras.models", "keras.initializers", "keras.regularizers",
                           "keras.constraints", "keras.dtype_policies",
                           # tf_keras's to_json() names its own module for a nested functional model
                           "tf_keras.src.engine.functional"})
# Keras 2 layers that Keras 3 lacks: the architecture reader rewrites these into Keras 3 ones ...
KERAS2_REWRITTEN_CLASSES = frozenset({"ThresholdedReLU", *CUDNN_EQUIVALENTS})
# ... and refuses these, saying why.
KERAS2_REMOVED_CLASSES = {
    "LocallyConnected1D": "Keras 3 removed it", "LocallyConnected2D": "Keras 3 removed it",
    "DenseFeatures": "it reads TensorFlow feature columns, which Keras 3 does not have",
    "RandomHeight": "Keras 3 removed it", "RandomWidth": "Keras 3 removed it",
    "RadialConstraint": "Keras 3 removed it",
}
# Markers inside Keras 3 configs that name no class.
CONFIG_MARKERS = frozenset({"__keras_tensor__"})


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
    if isinstance(name, str) and name in KERAS2_REMOVED_CLASSES:
        raise InputError(source, f"{where} is a Keras 2 {name}, which does not load: {KERAS2_REMOVED_CLASSES[name]}")
    if not isinstance(name, str) or name not in BUILTIN_CLASSES | CONFIG_MARKERS | KERAS2_REWRITTEN_CLASSES:
        raise InputError(source, f"{where} names class {name!r}, which is not one of Keras's built-in classes; "
                                 "only those load (no Lambda, custom objects or code)")
    module = node.get("module")
    if module is not None and (not isinstance(module, str) or module not in KERAS_MODULES):
        raise InputError(source, f"{where} takes {name!r} from module {str(module)[:100]!r}; only Keras's own "
                                 "classes load")
    registered = node.get("registered_name")
    if registered is not None and (not isinstance(registered, str) or registered != name):
        raise InputError(source, f"{where} names the registered object {str(registered)[:100]!r}; "
                                 "custom objects do not load")
