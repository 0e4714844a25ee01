"""Load any saved model: a Keras 3 ``.keras`` file or a Keras 2 full-model ``.h5``, with no code from the file running.

Import this module only after ``runtime.start()`` has chosen the backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras

from . import keras_private
from .errors import InputError, first_line
from .legacy import load_legacy_h5
from .legacy.architecture import check_parameter_count, runnable_on_this_backend
from .model_files import LEGACY_SUFFIXES, check_model_file


def count_keras_parameters(text: bytes, path) -> int:
    """The parameters a ``.keras`` file's ``config.json`` asks for, counted without allocating them; refused
    over the cap."""
    try:
        config = json.loads(text)
        if isinstance(config, dict):  # the architecture only: compiling makes variables with values
            config = {key: value for key, value in config.items() if key != "compile_config"}

        def build():
            with keras_private.safe_mode_scope(True):
                return keras.saving.deserialize_keras_object(config, safe_mode=True)

        parameters = keras_private.count_unallocated_parameters(build)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever Keras raises, the config is not a usable model
        raise InputError(path, f"not a loadable Keras model ({first_line(err, limit=300)})") from None
    check_parameter_count(parameters, path)
    return parameters


def load_saved_model(path, compile: bool = True) -> keras.Model:
    """Load a ``.keras`` model file, or a Keras 2 full-model ``.h5``, with no code from the file running.

    ``.keras`` loads with Keras's ``safe_mode`` on; ``.h5``/``.hdf5`` go to
    ``legacy.load_legacy_h5`` (optimizer state included). With ``compile``
    off only the architecture and weights load: what the training config
    names (a custom metric or loss, an optimizer this tool cannot restore) is
    not looked at, which is all predicting and scoring need. Raises
    ``InputError`` with one line when the file is missing or is not a model.
    """
    path = Path(path)
    if path.suffix.lower() in LEGACY_SUFFIXES:
        return load_legacy_h5(path, compile=compile)  # it checks the file first, as check_model_file does
    check_model_file(path, count_keras_parameters)  # the weights may declare no more than the config's parameters need
    try:
        with keras_private.weights_from_a_file():  # Keras loads every weight, or raises
            model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as err:  # noqa: BLE001 - whatever Keras raises, the file is not a usable model
        detail = first_line(err)
        raise InputError(path, f"not a loadable Keras model ({detail})") from None
    return runnable_on_this_backend(model)
