"""How untrusted model files are opened and parsed: text, YAML, JSON and HDF5, capped in size.

YAML is parsed by a ``SafeLoader`` that knows only ``!!python/tuple`` and
``!!python/unicode``; HDF5 files are walked for links and external storage
before any data is read; structures are capped in size; and any problem is one
``InputError`` line. What a file may *name* (Keras's built-in classes only) is
``classes``'s.

This module imports no Keras, so the command line runs its checks before a
backend starts: a bad file is refused at once, not after seconds of start-up.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path

import h5py
import numpy as np
import yaml

from ..errors import InputError, first_line

MAX_CONFIG_NODES = 1_000_000  # YAML aliases can make a small file a huge (or cyclic) structure


# ---------------------------------------------------------------------------
# Parsing untrusted text
# ---------------------------------------------------------------------------

class Keras2YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus the two harmless tags Keras 2's ``to_yaml`` wrote.

    ``!!python/tuple`` becomes a tuple and ``!!python/unicode`` a string; any
    other ``!!python/...`` tag (``object/apply``, ``name``, ``module`` ...)
    stops the parse with ``RefusedYamlTag`` before anything is constructed.
    A key given twice in one mapping must have the same value both times.
    """

    def compose_node(self, parent, index):
        # PyYAML refuses an anchor defined twice, but the same to_yaml() text appended again repeats its
        # anchors (&id001 ...); as YAML 1.2 says, an alias then means the latest definition.
        if not self.check_event(yaml.AliasEvent):
            self.anchors.pop(self.peek_event().anchor, None)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        # Keras 2's to_yaml() text has no "---", so appending it to a file twice repeats every top-level key.
        # YAML keeps the last value; here the repeat is accepted only when it says the same.
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if (key.tag, key.value) in seen and not same_yaml_node(seen[key.tag, key.value], value):
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key.value!r} is given twice with different values (two different "
                                        "to_yaml() texts appended to one file?)", key.start_mark)
                    seen[key.tag, key.value] = value
        return super().construct_mapping(node, deep)


def same_yaml_node(a, b) -> bool:
    """Whether two composed YAML nodes say the same (same tags and values), comparing at most
    ``MAX_CONFIG_NODES`` nodes: aliases can make a small text a huge or cyclic structure."""
    budget, pending = MAX_CONFIG_NODES, [(a, b)]
    while pending:
        a, b = pending.pop()
        budget -= 1
        if budget < 0:
            raise yaml.YAMLError("YAML is too large or refers to itself")
        if a is b:
            continue
        if type(a) is not type(b) or a.tag != b.tag or len(a.value) != len(b.value):
            return False
        if isinstance(a, yaml.ScalarNode):
            if a.value != b.value:
                return False
        elif isinstance(a, yaml.MappingNode):
            pending += [pair for (ka, va), (kb, vb) in zip(a.value, b.value) for pair in ((ka, kb), (va, vb))]
        else:
            pending += zip(a.value, b.value)
    return True


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
    """Parse ``to_yaml()`` output of any Keras 2 release into plain dicts, lists, tuples and scalars.

    A file holding the same document more than once (appended again, with or without ``---``) reads as that
    document; documents that differ are refused.
    """
    try:
        loader = Keras2YamlLoader(text)  # its reader already refuses characters YAML does not allow
    except yaml.YAMLError as err:
        raise InputError(source, f"not valid YAML ({' '.join(str(err).split())[:300]})") from None
    try:
        documents = []
        while loader.check_node():
            documents.append(loader.get_node())
        if not documents:
            return None
        if not all(same_yaml_node(documents[0], other) for other in documents[1:]):
            raise InputError(source, f"holds {len(documents)} YAML documents that differ; an architecture file "
                                     "holds one (the same one repeated is accepted)")
        return loader.construct_document(documents[0])
    except InputError:
        raise
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

# Caps on what an untrusted file may make the tool read. Real Keras 2 files are far below them: the
# original's model_config is 8 KB, its YAML 9 KB, its layer_names 300 bytes, all its arrays 4 MB.
MAX_CONFIG_BYTES = 2 * 2**20  # a YAML/JSON architecture or training config (file or HDF5 attribute)
MAX_H5_DATA_BYTES = 2 * 2**30  # all datasets of an HDF5 file, as declared, every link counted
MAX_H5_OBJECTS = 100_000  # groups, datasets and links in an HDF5 file (the original has 100)
# Where the cap can be raised, the refusal says so.
RAISE_HINT = "a cap of this tool; raise mnist_multibackend.legacy.safety.{} to accept it"


def existing_file(path) -> Path:
    """``path`` as a ``Path``, or ``InputError`` if it is not an existing regular file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "is not a file")
    return path


# The model files a path may be expected to hold: what each starts with, and the name it goes by.
H5_FILE, KERAS_ARCHIVE, ARCHITECTURE_TEXT = "an HDF5 file", "a .keras archive", "a YAML or JSON architecture"
SIGNATURES = {H5_FILE: (b"\x89HDF\r\n\x1a\n", "an HDF5 file", "a Keras 2 model or weights file", ".h5"),
              KERAS_ARCHIVE: (b"PK\x03\x04", "a zip archive", "a Keras 3 model", ".keras")}
SNIFF_BYTES = 1024
_LFS_POINTER = re.compile(rb"version https://git-lfs\.github\.com/spec/v\d+\s.*?^size (\d+)\s*$", re.S | re.M)
_HTML = re.compile(rb"(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)[\s>]", re.S | re.I)


def disguised_content(path, expected: str) -> str | None:
    """Why ``path``, which should be ``expected`` (``H5_FILE``, ``KERAS_ARCHIVE`` or ``ARCHITECTURE_TEXT``),
    is something else, told from its first bytes; ``None`` when they show nothing amiss.

    Catches what a download or a checkout leaves in place of a model file: an
    HTML page (a GitHub "blob" page saved instead of the raw file), a Git LFS
    pointer, an empty file, and one kind of model file under another's name
    (a ``.keras`` zip or a YAML/JSON architecture named ``.h5`` ...).
    """
    with open(existing_file(path), "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not head:
        return f"is an empty file, not {expected}"
    pointer = _LFS_POINTER.match(text)
    if pointer or text.startswith(b"version https://git-lfs."):
        size = f"a {int(pointer.group(1)):,}-byte file" if pointer else "a file"
        return f"is a Git LFS pointer to {size}, not the file itself (run git lfs pull)"
    if _HTML.match(text):
        return f"is an HTML page, not {expected} (downloaded from a web page rather than the raw file?)"
    for kind, (signature, found, holds, suffix) in SIGNATURES.items():
        if kind != expected and head.startswith(signature):
            return f"is {found}, not {expected} ({holds}? give it a {suffix} name)"
    if expected in SIGNATURES and not head.startswith(SIGNATURES[expected][0]) and _is_text(head):
        shown = " ".join(text[:40].decode("utf-8", errors="replace").split())
        form = "JSON" if text.startswith(b"{") else "YAML" if b"class_name:" in head else None
        hint = f" (an architecture from to_{form.lower()}()? give it a .{form.lower()} name)" if form else ""
        return f"is {form or 'plain'} text starting {shown!r}, not {expected}{hint}"
    return None


def _is_text(head: bytes) -> bool:
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:  # a character cut at the end of the sniffed bytes is still text
        return err.start >= len(head) - 3
    return True


def read_text_file(path, limit: int | None = None) -> str:
    """The UTF-8 text of a file of at most ``limit`` bytes (``MAX_CONFIG_BYTES``), checked before reading;
    an HTML page, Git LFS pointer, HDF5 file or zip archive in its place is refused (``disguised_content``)."""
    path = existing_file(path)
    limit = MAX_CONFIG_BYTES if limit is None else limit
    disguise = disguised_content(path, ARCHITECTURE_TEXT)
    if disguise:
        raise InputError(path, disguise)
    size = path.stat().st_size
    if size > limit:
        raise InputError(path, f"is {size:,} bytes; a model description of more than {limit:,} bytes is refused "
                               f"({RAISE_HINT.format('MAX_CONFIG_BYTES')})")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def _declared_bytes(shape, dtype) -> int:
    return math.prod(shape or ()) * dtype.itemsize


def check_h5_structure(f: h5py.File, source, max_data_bytes: int | None = None) -> None:
    """Refuse an HDF5 file that could make the tool read anything but its own bytes, or too many of them.

    Walks every link from the root before any data is read (link and
    storage metadata only): soft and external links, datasets stored in
    external files and virtual datasets are refused, as are files whose
    datasets declare more than ``max_data_bytes`` (``MAX_H5_DATA_BYTES``) in
    all, every link counted (one huge dataset listed three times counts
    three times), or that hold more than ``MAX_H5_OBJECTS`` links.
    """
    max_data_bytes = MAX_H5_DATA_BYTES if max_data_bytes is None else max_data_bytes
    seen_groups, pending = {f.id}, [("", f)]
    links = declared = 0
    while pending:
        prefix, group = pending.pop()
        for name in group:
            where = f"{prefix}{name}"
            links += 1
            if links > MAX_H5_OBJECTS:
                raise InputError(source, f"holds more than {MAX_H5_OBJECTS:,} HDF5 objects; refused "
                                         f"({RAISE_HINT.format('MAX_H5_OBJECTS')})")
            link = group.get(name, getlink=True)
            if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
                kind = "a soft link" if isinstance(link, h5py.SoftLink) else "an external link"
                raise InputError(source, f"{where} is {kind}; refused: this tool reads only the file it is given")
            if not isinstance(link, h5py.HardLink):
                raise InputError(source, f"{where} is a link of an unknown kind; refused")
            obj = group[name]
            if isinstance(obj, h5py.Group):
                if obj.id not in seen_groups:
                    seen_groups.add(obj.id)
                    pending.append((f"{where}/", obj))
            elif isinstance(obj, h5py.Dataset):
                _check_dataset_storage(obj, where, source)
                declared += _declared_bytes(obj.shape, obj.dtype)
                if declared > max_data_bytes:
                    raise InputError(source, f"its datasets declare more than {max_data_bytes:,} bytes in all "
                                             f"(at {where}); refused before reading any "
                                             f"({RAISE_HINT.format('MAX_H5_DATA_BYTES')})")


def _check_dataset_storage(dataset: h5py.Dataset, where: str, source) -> None:
    if dataset.external:
        raise InputError(source, f"{where} is stored in an external file; refused: this tool reads only the "
                                 "file it is given")
    if dataset.is_virtual:
        raise InputError(source, f"{where} is a virtual dataset (its data lives in other files); refused: this "
                                 "tool reads only the file it is given")


@contextlib.contextmanager
def open_h5(path, max_data_bytes: int | None = None):
    """Open an untrusted HDF5 file for reading: the one way the project opens one.

    The whole file passes ``check_h5_structure`` before anything in it is
    read; what h5py raises on a damaged file becomes an ``InputError`` naming it.
    """
    path = existing_file(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InputError(path, disguised_content(path, H5_FILE)
                         or f"not an HDF5 file ({first_line(err, limit=300)})") from None
    try:
        check_h5_structure(f, path, max_data_bytes)
        yield f
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as err:
        # h5py reports damaged or unexpected contents this way
        raise InputError(path, f"damaged or unexpected HDF5 contents ({first_line(err, limit=300)})") from None
    finally:
        f.close()


# A Keras-format checkpoint (.weights.h5) holds the weights and the optimizer's variables: with Adam (two
# moments, and amsgrad's maxima) at most four values per parameter, in float64 at worst, plus room for counters.
CHECKPOINT_VALUES_PER_PARAMETER = 4


def weights_bytes_limit(parameters: int) -> int:
    """What a file of the weights and optimizer state of a model of ``parameters`` may declare, at most:
    ``CHECKPOINT_VALUES_PER_PARAMETER`` float64 values per parameter, plus 1 MiB."""
    return CHECKPOINT_VALUES_PER_PARAMETER * 8 * int(parameters) + 2**20


def check_h5_file(path, expected_parameters: int | None = None) -> None:
    """Refuse an untrusted HDF5 file before another reader (Keras's ``load_weights``) opens it.

    Runs ``check_h5_structure``; with ``expected_parameters`` (the model's
    ``count_params()``), its datasets may declare at most what that model's
    weights and optimizer state take (``CHECKPOINT_VALUES_PER_PARAMETER``
    float64 values per parameter, plus 1 MiB).
    """
    limit = None
    if expected_parameters is not None:
        limit = min(MAX_H5_DATA_BYTES, weights_bytes_limit(expected_parameters))
    with open_h5(path, limit):
        pass


# ---------------------------------------------------------------------------
# Reading from an untrusted HDF5 file (opened with open_h5)
# ---------------------------------------------------------------------------

def _link(group: h5py.Group, name: str, source, what: str):
    """The object ``name`` in ``group``, a hard link only, without reading data."""
    try:
        link = group.get(name, getlink=True)
    except (KeyError, ValueError, TypeError):
        link = None
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        raise InputError(source, f"{what} {name!r} is a {type(link).__name__}; refused: this tool reads only the "
                                 "file it is given")
    return group[name]


def get_group(group: h5py.Group, name: str, source, what: str) -> h5py.Group:
    """The group ``name`` in ``group`` (a hard link), or ``InputError``."""
    found = _link(group, name, source, what) if isinstance(name, str) and name else None
    if not isinstance(found, h5py.Group):
        raise InputError(source, f"{what} lists {name!r} but the file holds no such group")
    return found


def get_dataset(group: h5py.Group, name: str, source, what: str) -> h5py.Dataset:
    """The dataset ``name`` in ``group`` (its metadata only: nothing is read), checked for storage and dtype."""
    if not isinstance(name, str) or not name:
        raise InputError(source, f"{what} names {name!r}, which is not a dataset name")
    dataset = _link(group, name, source, what)
    if not isinstance(dataset, h5py.Dataset):
        raise InputError(source, f"{what} lists {name!r} but holds no such array")
    _check_dataset_storage(dataset, f"{group.name.strip('/')}/{name}".strip("/"), source)
    if dataset.dtype.kind not in "fiub":
        raise InputError(source, f"{what} {name!r} holds {dataset.dtype} values; numbers only are read")
    return dataset


def read_array(dataset: h5py.Dataset, shape, source, what: str) -> np.ndarray:
    """The one reader of array data: the values of ``dataset``, read only once its shape is the expected one."""
    if tuple(dataset.shape) != tuple(shape):
        raise InputError(source, f"{what} has shape {tuple(dataset.shape)}; expected {tuple(shape)}")
    if dataset.dtype.kind not in "fiu":  # Keras 2 wrote floats, and integer step counts
        raise InputError(source, f"{what} holds {dataset.dtype} values; expected numbers")
    if dataset.size and dataset.id.get_storage_size() == 0:
        raise InputError(source, f"{what} was declared but never written: it would read as its fill value")
    values = np.asarray(dataset[()])
    # A weight of NaN or infinity gives confident nonsense (ReLU and pooling hide the NaN), not an error
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InputError(source, f"{what} holds NaN or infinite values")
    return values


def read_names(group: h5py.Group, name: str, source) -> list:
    """A list-of-names attribute (``layer_names``, ``weight_names``), joined again if Keras 2 split it into
    chunks (``name0``, ``name1`` ...), the parts' sizes checked before any is read."""
    if name in group.attrs:
        parts = [name]
    else:
        parts = []
        while f"{name}{len(parts)}" in group.attrs and len(parts) <= MAX_H5_OBJECTS:
            parts.append(f"{name}{len(parts)}")
    total = sum(_attribute_size(group, part, source) for part in parts)
    if total > MAX_CONFIG_BYTES:
        raise InputError(source, f"attribute {name!r} of {group.name} is {total:,} bytes; more than "
                                 f"{MAX_CONFIG_BYTES:,} is refused ({RAISE_HINT.format('MAX_CONFIG_BYTES')})")
    names, total = [], 0
    for part in parts:
        for item in np.atleast_1d(group.attrs[part]).ravel():
            item = bytes(item).decode("utf8", errors="replace") if isinstance(item, (bytes, np.bytes_)) else item
            if not isinstance(item, str):  # Keras 2 wrote an empty float array for "no names"
                if isinstance(item, (float, np.floating)) and parts == [name]:
                    continue
                raise InputError(source, f"attribute {name!r} of {group.name} holds {type(item).__name__} "
                                         "values, not names")
            names.append(item)
            total += len(item)
    if total > MAX_CONFIG_BYTES:  # variable-length names, measured only now
        raise InputError(source, f"attribute {name!r} of {group.name} is {total:,} characters; more than "
                                 f"{MAX_CONFIG_BYTES:,} is refused ({RAISE_HINT.format('MAX_CONFIG_BYTES')})")
    return names


def _attribute_size(obj, name: str, source) -> int:
    """What reading attribute ``name`` costs, from its metadata alone.

    Fixed-length values are stored in the file uncompressed; their size is
    the declared one. Variable-length strings (tf_keras writes name lists so)
    live in the file's heap: they count as 0 here, their number is capped at
    ``MAX_H5_OBJECTS`` and their text is measured once read.
    """
    attr = obj.attrs.get_id(name)
    dtype, count = attr.dtype, math.prod(attr.shape or ())
    string = h5py.check_string_dtype(dtype)
    if h5py.check_vlen_dtype(dtype) is not None or (string is not None and string.length is None) \
            or dtype.kind == "O":
        if count > MAX_H5_OBJECTS:
            raise InputError(source, f"attribute {name!r} of {obj.name} is a list of {count:,} values; more than "
                                     f"{MAX_H5_OBJECTS:,} is refused ({RAISE_HINT.format('MAX_H5_OBJECTS')})")
        return 0
    return count * dtype.itemsize


def read_text_attribute(obj, name: str, source, limit: int | None = None) -> str:
    """A text attribute (``model_config``, ``training_config``), its size checked before it is read."""
    limit = MAX_CONFIG_BYTES if limit is None else limit
    size = _attribute_size(obj, name, source)
    if size > limit:
        raise InputError(source, f"attribute {name!r} is {size:,} bytes; a model description of more than "
                                 f"{limit:,} bytes is refused ({RAISE_HINT.format('MAX_CONFIG_BYTES')})")
    value = obj.attrs[name]
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())[()]
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise InputError(source, f"attribute {name!r} is not text")
    if len(value) > limit:  # a variable-length value, measured only now
        raise InputError(source, f"attribute {name!r} is {len(value):,} characters; a model description of more "
                                 f"than {limit:,} bytes is refused ({RAISE_HINT.format('MAX_CONFIG_BYTES')})")
    return value


def full_model_configs(f: h5py.File, source, compile: bool = True) -> tuple:
    """``(model_config, training_config)`` of a Keras 2 ``model.save()`` file (opened with ``open_h5``),
    parsed; ``training_config`` is ``None`` when the file has none or ``compile`` is off.
    ``InputError`` for a file that is no such file (a weights-only file says so)."""
    if "model_config" not in f.attrs:
        hint = (": it holds weights only; pair it with the architecture YAML (load_weights_h5, or "
                "mnist-mb legacy import ARCH.yaml --weights FILE)"
                if "layer_names" in f.attrs else "")
        raise InputError(source, f"no model_config attribute, so not a Keras 2 full-model file{hint}")
    model_config = parse_json(read_text_attribute(f, "model_config", source), source, "model_config")
    training_config = None
    if compile and "training_config" in f.attrs:
        training_config = parse_json(read_text_attribute(f, "training_config", source), source, "training_config")
    return model_config, training_config
