"""Load any saved model: a Keras 3 ``.keras`` file or a Keras 2 full-model ``.h5``, with no code from the file running.

Import this module only after ``runtime.start()`` has chosen the backend.
"""

from __future__ import annotations

from pathlib import Path

import keras

from .errors import InputError, first_line
from .legacy import load_legacy_h5

LEGACY_SUFFIXES = (".h5", ".hdf5")


def load_saved_model(path, compile: bool = True) -> keras.Model:
    """Load a ``.keras`` model file, or a Keras 2 full-model ``.h5``, with no code from the file running.

    ``.keras`` loads with Keras's ``safe_mode`` on; ``.h5``/``.hdf5`` go to
    ``legacy.load_legacy_h5`` (optimizer state included). Raises
    ``InputError`` with one line when the file is missing or is not a model.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "is not a file")
    if path.suffix.lower() in LEGACY_SUFFIXES:
        return load_legacy_h5(path, compile=compile)
    if path.suffix != ".keras":
        raise InputError(path, f"unknown model format {path.suffix!r}; expected a .keras file or a Keras 2 .h5")
    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as err:  # noqa: BLE001 - whatever Keras raises, the file is not a usable model
        detail = first_line(err)
        raise InputError(path, f"not a loadable Keras model ({detail})") from None
