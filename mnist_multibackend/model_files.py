"""What a model file is, told without Keras: the checks a command makes on the files it names before a
backend starts.

A missing, disguised, damaged or oversized file, a hostile HDF5 layout and an
unsafe YAML tag are refused here at once, instead of after the seconds a
backend takes to start. The loaders (``loading.load_saved_model``,
``legacy.import_legacy``) call the same checks, so a Python caller gets the same
one-line refusal; what needs Keras (the classes a config names, the parameters it
asks for, the shapes of its weights) is checked there, after the start.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections import Counter
from pathlib import Path

import h5py

from .data import MAX_ZIP_DIRECTORY_BYTES, read_npy_header, zip_directory_bytes
from .errors import InputError, first_line
from .legacy.safety import (KERAS_ARCHIVE, check_h5_structure, disguised_content, existing_file,
                            full_model_configs, open_h5, parse_json, parse_keras2_yaml, read_text_file,
                            weights_bytes_limit)

LEGACY_SUFFIXES = (".h5", ".hdf5")  # a Keras 2 model.save() file
ARCHITECTURE_SUFFIXES = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}  # to_yaml() / to_json() text

# Caps on a .keras archive, checked with zipfile before Keras opens it. Real ones are far below: the
# project's model.keras holds a 10 KB config.json, a 100-byte metadata.json and 4 MB of weights.
MAX_KERAS_CONFIG_BYTES = 2 * 2**20  # config.json (Keras 3's JSON of the model)
MAX_KERAS_METADATA_BYTES = 64 * 2**10  # metadata.json (versions and a date)
MAX_KERAS_UNCOMPRESSED_BYTES = 2 * 2**30  # all members, as declared
# An archive with more than its three files (assets) is extracted whole into a temporary folder by Keras:
# what it would write to disk there, and the number of entries.
MAX_KERAS_ASSET_BYTES = 256 * 2**20
MAX_KERAS_MEMBERS = 10_000
KERAS_FILES = ("config.json", "metadata.json", "model.weights.h5", "model.weights.npz")
# Keras stores members uncompressed (ratio 1); DEFLATE manages at most about 1032:1 on the most repetitive data.
MAX_KERAS_COMPRESSION_RATIO = 100
_RATIO_FLOOR_BYTES = 2**20  # below this a member may be as compressible as it likes
_RAISE = "a cap of this tool; raise mnist_multibackend.model_files.{} to accept it"


def check_model_file(path, count_parameters=None) -> Path:
    """Refuse, without Keras, a model file (``.keras``, or a Keras 2 full-model ``.h5``) that cannot load.

    Returns the path. What is left for the loader is what only Keras can
    tell: the classes the config names, the parameters it asks for (a
    ``.keras`` loader passes ``count_parameters``, see ``check_keras_archive``)
    and the shapes of the weights.
    """
    path = existing_file(path)
    if path.suffix.lower() in LEGACY_SUFFIXES:
        with open_h5(path) as f:  # every link and dataset checked before anything is read
            full_model_configs(f, path, compile=True)
    elif path.suffix == ".keras":
        check_keras_archive(path, count_parameters)
    else:
        raise InputError(path, f"unknown model format {path.suffix!r}; expected a .keras file or a Keras 2 .h5")
    return path


def check_legacy_sources(source, weights=None) -> None:
    """Refuse, without Keras, what ``legacy import`` is given: a Keras 2 full-model ``.h5``, or an
    architecture ``.yaml``/``.json`` with its weights ``.h5``."""
    source = Path(source)
    form = ARCHITECTURE_SUFFIXES.get(source.suffix.lower())
    if form is None:
        if weights is not None:
            raise InputError(weights, "--weights goes with a YAML or JSON architecture; a full-model .h5 has its "
                                      "own weights")
        check_model_file(source)
        return
    if weights is None:
        raise InputError(source, f"a {form} file holds the architecture only; give its weights with --weights")
    check_inspectable(source)
    with open_h5(weights):
        pass


def check_inspectable(path) -> Path:
    """Refuse, without Keras, a file that ``legacy inspect`` could not report on: missing, disguised or
    damaged, whatever its kind (``.keras``, a Keras 2 model or weights ``.h5``, a ``.yaml``/``.json``
    architecture). Returns the path."""
    path = existing_file(path)
    form = ARCHITECTURE_SUFFIXES.get(path.suffix.lower())
    if path.suffix.lower() == ".keras":
        check_keras_archive(path)
    elif form is not None:
        text = read_text_file(path)
        parse_json(text, path, "the architecture") if form == "JSON" else parse_keras2_yaml(text, path)
    else:
        with open_h5(path):
            pass
    return path


def check_keras_archive(path, count_parameters=None) -> None:
    """Refuse a ``.keras`` file that is not a zip archive, or whose members are too large or compressed
    suspiciously well, or whose weights file would make Keras read outside it; before Keras opens it.

    ``count_parameters(config_text, path)``, where Keras is loaded, counts the
    parameters the config asks for (refusing too many): the weights file may
    then declare no more than that model and its optimizer hold.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:  # zipfile reads the whole directory and makes an object per entry
            directory = zip_directory_bytes(file, os.fstat(file.fileno()).st_size)
        if directory is not None and directory > MAX_ZIP_DIRECTORY_BYTES:
            raise InputError(path, f"its zip directory is {directory:,} bytes; more than {MAX_ZIP_DIRECTORY_BYTES:,} "
                                   "is refused (a cap of this tool; raise mnist_multibackend.data."
                                   "MAX_ZIP_DIRECTORY_BYTES to accept it)")
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_KERAS_MEMBERS:
                raise InputError(path, f"holds {len(infos):,} members; more than {MAX_KERAS_MEMBERS:,} is refused "
                                       f"({_RAISE.format('MAX_KERAS_MEMBERS')})")
            members = {info.filename: info for info in infos}
            if len(members) < len(infos):  # which one Keras reads is zipfile's choice; the sizes counted one
                twice = next(name for name, count in Counter(i.filename for i in infos).items() if count > 1)
                raise InputError(path, f"not a loadable Keras model: the archive holds two members named {twice}")
            extracted = sum(info.file_size for info in infos if info.filename not in KERAS_FILES)
            if extracted > MAX_KERAS_ASSET_BYTES:  # Keras writes them all to a temporary folder
                raise InputError(path, f"holds {extracted:,} bytes besides the model's own files; more than "
                                       f"{MAX_KERAS_ASSET_BYTES:,} is refused "
                                       f"({_RAISE.format('MAX_KERAS_ASSET_BYTES')})")
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
            try:
                json.loads(text)
            except (ValueError, RecursionError) as err:
                raise InputError(path, f"not a loadable Keras model: its config.json is not valid JSON "
                                       f"({first_line(err, limit=200)})") from None
            parameters = count_parameters(text, path) if count_parameters else None
            if "model.weights.h5" in members:
                with archive.open("model.weights.h5") as handle:
                    _check_weights_member(handle, path, parameters)
            elif "model.weights.npz" in members:
                with archive.open("model.weights.npz") as handle:
                    _check_npz_weights_member(handle, path, parameters)
    except zipfile.BadZipFile as err:
        raise InputError(path, disguised_content(path, KERAS_ARCHIVE)
                         or f"not a loadable Keras model: not a zip archive, or a truncated one "
                            f"({first_line(err, limit=200)})") from None
    except (OSError, EOFError, RuntimeError, ValueError, NotImplementedError) as err:
        raise InputError(path, f"not a loadable Keras model: a damaged archive ({first_line(err, limit=200)})") \
            from None


def _check_npz_weights_member(handle, path, parameters: int | None) -> None:
    # Keras's other weights format: an .npz inside the .keras, each array's .npy header read (not its
    # data) and their declared sizes summed against what the model and its optimizer can hold.
    limit = MAX_KERAS_UNCOMPRESSED_BYTES if parameters is None else weights_bytes_limit(parameters)
    where = f"{path} (model.weights.npz)"
    try:
        with zipfile.ZipFile(handle) as weights:
            infos = weights.infolist()
            if len(infos) > MAX_KERAS_MEMBERS:
                raise InputError(where, f"holds {len(infos):,} arrays; more than {MAX_KERAS_MEMBERS:,} is refused")
            declared = 0
            for info in infos:
                with weights.open(info) as member:
                    shape, _, dtype = read_npy_header(where, member)
                declared += math.prod(shape) * dtype.itemsize
                if declared > limit:
                    raise InputError(where, f"its arrays declare more than {limit:,} bytes, more than the model "
                                            "and its optimizer hold; refused")
    except zipfile.BadZipFile as err:
        raise InputError(path, f"not a loadable Keras model: model.weights.npz is not an .npz "
                               f"({first_line(err, limit=200)})") from None


def _check_weights_member(handle, path, parameters: int | None) -> None:
    # A .weights.h5 holds the weights and, for a compiled model, the optimizer's variables.
    limit = None if parameters is None else weights_bytes_limit(parameters)
    try:
        with h5py.File(handle, "r") as f:
            check_h5_structure(f, f"{path} (model.weights.h5)", limit)
    except OSError as err:
        raise InputError(path, f"not a loadable Keras model: model.weights.h5 is not HDF5 "
                               f"({first_line(err, limit=200)})") from None
