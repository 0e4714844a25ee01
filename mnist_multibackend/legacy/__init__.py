"""Keras 2 files, read and written by Keras 3 on any backend.

Three formats, as the original project (Keras 2.1.2) wrote them:

- full model HDF5 (``model.save``): attributes ``model_config`` and
  ``training_config`` (JSON), group ``model_weights``, group
  ``optimizer_weights`` (the optimizer's state) — ``load_legacy_h5`` / ``save_legacy_h5``;
- architecture YAML (``model.to_yaml()``) — ``model_from_yaml`` / ``model_to_yaml``, and the same as JSON
  (``model.to_json()``) — ``model_from_json`` / ``model_to_json``;
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
optimizer state as ``iterations`` then each kind of slot for all weights) so
that Keras 2 itself, e.g. ``tf_keras``, reads it. All seven Keras 2 optimizers
(SGD, RMSprop, Adagrad, Adadelta, Adam, Adamax, Nadam) load and are written;
where Keras 3's own takes other steps, ``keras2_optimizers`` has one that takes
Keras 2's.

Modules, each importing only those after it (no cycles): ``files`` (the file
API), ``optimizer`` (training config, optimizer state), ``keras2_optimizers`` (Keras 2's
updates where Keras 3's differ), ``architecture`` (configs both ways), ``numerics``
(Keras 2 functions whose Keras 3 namesakes compute something else), ``weights``
(weight groups), ``recurrent`` (cuDNN and pre-``reset_after`` recurrent layers), ``classes``
(what a file may name), ``safety`` (parsing and opening untrusted files). The Keras-private
names they need are reached through ``mnist_multibackend.keras_private`` only.

The names below load their module when first used. ``safety`` and ``recurrent`` import no
Keras, so the command line checks a file with them before a backend starts; use the rest
only after ``runtime.start()`` has chosen the backend.
"""

import importlib

# Where each public name lives. Importing them here would import Keras with the package.
_EXPORTS = {
    "files": ("H5_NAME", "YAML_NAME", "WEIGHTS_NAME", "load_legacy_h5", "save_legacy_h5", "load_yaml_file",
              "load_json_file", "import_legacy", "export_legacy", "write_legacy_artifacts"),
    "architecture": ("model_from_keras2_config", "model_from_yaml", "model_from_json", "keras2_model_config",
                     "model_to_yaml", "model_to_json"),
    "weights": ("KERNEL_CONVENTION", "read_weights_group", "write_weights_group", "load_weights_h5",
                "save_weights_h5"),
    "optimizer": ("OPTIMIZERS", "optimizer_from_keras2", "compile_args_from_keras2", "compile_from_keras2",
                  "restore_optimizer_state", "keras2_training_config", "write_optimizer_state"),
    "keras2_optimizers": ("Keras2RMSprop", "Keras2Adagrad", "Keras2Nadam"),
    "classes": ("BUILTIN_CLASSES", "check_config_classes"),
    "safety": ("Keras2YamlLoader", "RefusedYamlTag", "parse_keras2_yaml"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULE_OF)


_SUBMODULES = {"architecture", "classes", "files", "inspection", "keras2_optimizers", "numerics", "optimizer",
               "recurrent", "safety", "weights"}


def __getattr__(name):
    if name in _SUBMODULES:  # legacy.safety and the like, as an eager package would have them
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__():
    return sorted({*globals(), *__all__})
