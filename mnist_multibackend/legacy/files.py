"""The file API: Keras 2 full-model HDF5, architecture YAML and weights HDF5, read and written whole.

What ``mnist-mb legacy import|export`` and ``mnist-mb train --legacy-artifacts`` call.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import keras

from .. import keras_private
from ..atomic import atomic_path, write_text
from ..errors import InputError
from ..model_files import check_legacy_sources
from .architecture import (keras2_model_config, model_from_json, model_from_keras2_config, model_from_yaml,
                           model_to_yaml)
from .optimizer import compile_from_keras2, keras2_training_config, restore_optimizer_state, write_optimizer_state
from .safety import full_model_configs, get_group, open_h5, read_text_file
from .weights import KERNEL_CONVENTION, load_weights_h5, read_weights_group, save_weights_h5, write_weights_group

# The file names the original project wrote, and `mnist-mb train --legacy-artifacts` writes again.
H5_NAME = "MNIST_keras_CNN.h5"
YAML_NAME = "MNIST_keras_CNN.yaml"
WEIGHTS_NAME = "MNIST_keras_w_CNN.h5"


def load_yaml_file(path) -> keras.Model:
    """``model_from_yaml`` on a file; ``InputError`` names the file."""
    return model_from_yaml(read_text_file(path), source=path)


def load_json_file(path) -> keras.Model:
    """``model_from_json`` on a file (Keras 2's ``to_json()``); ``InputError`` names the file."""
    return model_from_json(read_text_file(path), source=path)


# ---------------------------------------------------------------------------
# Full-model HDF5
# ---------------------------------------------------------------------------

def load_legacy_h5(path, compile: bool = True) -> keras.Model:
    """A Keras 2 ``model.save()`` file: architecture, weights and, with ``compile``, the training config
    (optimizer, loss, metrics) and the optimizer's state (iterations and per-weight slots), so training resumes
    where it stopped.

    Raises ``InputError`` (one line naming the file) for anything that is not such a file.
    """
    with open_h5(path) as f:
        model_config, training_config = full_model_configs(f, path, compile)
        with keras_private.weights_from_a_file():  # read_weights_group below sets every weight
            model = model_from_keras2_config(model_config, path)
        if "model_weights" not in f or not isinstance(f["model_weights"], h5py.Group):
            raise InputError(path, "no model_weights group")
        read_weights_group(f["model_weights"], model, path)
        if training_config is None:
            return model
        compile_from_keras2(model, training_config, path)
        if "optimizer_weights" in f:
            restore_optimizer_state(model, get_group(f, "optimizer_weights", path, "the file"), path)
    return model


def save_legacy_h5(model: keras.Model, path) -> None:
    """Write ``model`` as Keras 2.1.2's ``model.save()`` did: Keras 2 architecture, weights and, when the model
    is compiled with an optimizer Keras 2 had, its training config and optimizer state."""
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
                write_optimizer_state(f, model)


# ---------------------------------------------------------------------------
# What the command line calls
# ---------------------------------------------------------------------------

# Architecture-only files by suffix, and their readers.
ARCHITECTURE_READERS = {".yaml": load_yaml_file, ".yml": load_yaml_file, ".json": load_json_file}


def import_legacy(source, weights=None) -> keras.Model:
    """A model from Keras 2 files: a full-model ``.h5``, or an architecture ``.yaml``/``.json`` with a weights
    ``.h5``."""
    source = Path(source)
    check_legacy_sources(source, weights)  # the flags, and the files as far as no Keras is needed
    architecture = ARCHITECTURE_READERS.get(source.suffix.lower())
    if architecture is not None:
        with keras_private.weights_from_a_file():  # load_weights_h5 sets every weight, or refuses the file
            model = architecture(source)
        return load_weights_h5(model, weights)
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
