"""Load any saved model: a Keras 3 ``.keras`` file or a Keras 2 full-model ``.h5``, with no code from the file running.

Import this module only after ``runtime.start()`` has chosen the backend.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import h5py
import keras

from . import keras_private
from .errors import InputError, first_line
from .legacy import load_legacy_h5
from .legacy.architecture import check_parameter_count, runnable_on_this_backend
from .legacy.safety import CHECKPOINT_VALUES_PER_PARAMETER, KERAS_ARCHIVE, check_h5_structure, disguised_content

LEGACY_SUFFIXES = (".h5", ".hdf5")

# Caps on a .keras archive, checked with zipfile before Keras opens it. Real ones are far below: the
# project's model.keras holds a 10 KB config.json, a 100-byte metadata.json and 4 MB of weights.
MAX_KERAS_CONFIG_BYTES = 2 * 2**20  # config.json (Keras 3's JSON of the model)
MAX_KERAS_METADATA_BYTES = 64 * 2**10  # metadata.json (versions and a date)
MAX_KERAS_UNCOMPRESSED_BYTES = 2 * 2**30  # all members, as declared
# Keras stores members uncompressed (ratio 1); DEFLATE manages at most about 1032:1 on the most repetitive data.
MAX_KERAS_COMPRESSION_RATIO = 100
_RATIO_FLOOR_BYTES = 2**20  # below this a member may be as compressible as it likes
_RAISE = "a cap of this tool; raise mnist_multibackend.loading.{} to accept it"


def check_keras_archive(path) -> None:
    """Refuse a ``.keras`` file that is not a zip archive, or whose members are too large or compressed
    suspiciously well, or whose config asks for too many parameters, or whose weights file would make
    Keras read outside it or far more than that model holds; before Keras opens it.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            total = sum(info.file_size for info in members.values())
            if total > MAX_KERAS_UNCOMPRESSED_BYTES:
                raise InputError(path, f"its members declare {total:,} bytes uncompressed; more than "
                                       f"{MAX_KERAS_UNCOMPRESSED_BYTES:,} is refused "
                                       f"({_RAISE.format('MAX_KERAS_UNCOMPRESSED_BYTES')})")
            for info in members.values():
                if info.file_size > _RATIO_FLOOR_BYTES \
                        and info.file_size > MAX_KERAS_COMPRESSION_RATIO * max(info.compress_size, 1):
                    raise InputError(path, f"member {info.filename} expands {info.compress_size:,} bytes to "
                                           f"{info.file_size:,}, more than {MAX_KERAS_COMPRESSION_RATIO}:1; refused "
                                           "as a decompression bomb")
            for name, cap, constant in (("config.json", MAX_KERAS_CONFIG_BYTES, "MAX_KERAS_CONFIG_BYTES"),
                                        ("metadata.json", MAX_KERAS_METADATA_BYTES, "MAX_KERAS_METADATA_BYTES")):
                if name in members and members[name].file_size > cap:
                    raise InputError(path, f"its {name} is {members[name].file_size:,} bytes; more than {cap:,} "
                                           f"is refused ({_RAISE.format(constant)})")
            if "config.json" not in members:
                raise InputError(path, "not a loadable Keras model: the archive holds no config.json")
            with archive.open("config.json") as handle:
                text = handle.read(MAX_KERAS_CONFIG_BYTES + 1)
            parameters = _count_parameters(text, path)
            if "model.weights.h5" in members:
                with archive.open("model.weights.h5") as handle:
                    _check_weights_member(handle, path, parameters)
    except zipfile.BadZipFile as err:
        raise InputError(path, disguised_content(path, KERAS_ARCHIVE)
                         or f"not a loadable Keras model: not a zip archive, or a truncated one "
                            f"({first_line(err, limit=200)})") from None
    except (OSError, EOFError, RuntimeError, ValueError, NotImplementedError) as err:
        raise InputError(path, f"not a loadable Keras model: a damaged archive ({first_line(err, limit=200)})") \
            from None


def _count_parameters(text: bytes, path) -> int:
    """The parameters ``config.json`` asks for, counted without allocating them; refused over the cap."""
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


def _check_weights_member(handle, path, parameters: int) -> None:
    # A .weights.h5 holds the weights and, for a compiled model, the optimizer's variables.
    try:
        with h5py.File(handle, "r") as f:
            check_h5_structure(f, f"{path} (model.weights.h5)",
                               CHECKPOINT_VALUES_PER_PARAMETER * 8 * parameters + 2**20)
    except OSError as err:
        raise InputError(path, f"not a loadable Keras model: model.weights.h5 is not HDF5 "
                               f"({first_line(err, limit=200)})") from None


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
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "is not a file")
    if path.suffix.lower() in LEGACY_SUFFIXES:
        return load_legacy_h5(path, compile=compile)
    if path.suffix != ".keras":
        raise InputError(path, f"unknown model format {path.suffix!r}; expected a .keras file or a Keras 2 .h5")
    check_keras_archive(path)
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as err:  # noqa: BLE001 - whatever Keras raises, the file is not a usable model
        detail = first_line(err)
        raise InputError(path, f"not a loadable Keras model ({detail})") from None
    return runnable_on_this_backend(model)
