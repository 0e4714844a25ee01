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
(weight groups), ``recurrent`` (cuDNN and pre-``reset_after`` recurrent layers), ``safety`` (what a file may name; parsing and
opening untrusted files). The Keras-private names they need are reached through
``mnist_multibackend.keras_private`` only.

Import this package only after ``runtime.start()`` has chosen the backend.
"""

from .architecture import (keras2_model_config, model_from_json, model_from_keras2_config, model_from_yaml,
                           model_to_json, model_to_yaml)
from .files import (H5_NAME, WEIGHTS_NAME, YAML_NAME, export_legacy, import_legacy, load_json_file, load_legacy_h5,
                    load_yaml_file, save_legacy_h5, write_legacy_artifacts)
from .keras2_optimizers import Keras2Adagrad, Keras2Nadam, Keras2RMSprop
from .optimizer import (OPTIMIZERS, compile_args_from_keras2, compile_from_keras2, keras2_training_config,
                        optimizer_from_keras2, restore_optimizer_state, write_optimizer_state)
from .safety import BUILTIN_CLASSES, Keras2YamlLoader, RefusedYamlTag, check_config_classes, parse_keras2_yaml
from .weights import KERNEL_CONVENTION, load_weights_h5, read_weights_group, save_weights_h5, write_weights_group

__all__ = [
    # files
    "H5_NAME", "YAML_NAME", "WEIGHTS_NAME", "load_legacy_h5", "save_legacy_h5", "load_yaml_file", "load_json_file",
    "import_legacy",
    "export_legacy", "write_legacy_artifacts",
    # architecture
    "model_from_keras2_config", "model_from_yaml", "model_from_json", "keras2_model_config", "model_to_yaml",
    "model_to_json",
    # weights
    "KERNEL_CONVENTION", "read_weights_group", "write_weights_group", "load_weights_h5", "save_weights_h5",
    # optimizer
    "OPTIMIZERS", "optimizer_from_keras2", "compile_args_from_keras2", "compile_from_keras2",
    "restore_optimizer_state", "keras2_training_config", "write_optimizer_state", "Keras2RMSprop", "Keras2Adagrad",
    "Keras2Nadam",
    # safety
    "BUILTIN_CLASSES", "check_config_classes", "Keras2YamlLoader", "RefusedYamlTag", "parse_keras2_yaml",
]
