"""What a model file is, and what loading it here restores: ``mnist-mb legacy inspect``.

Static facts (kind, versions, layers, parameter counts, training config,
dialect features) come from the file through ``safety``'s readers only:
attributes, names and declared dataset shapes; no array is read and YAML goes
through the safe loader. What loads is found by loading the file for real (a
dry run), so the answer stays true as the loaders learn more.

Import this module only after ``runtime.start()`` has chosen the backend.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import zipfile
from pathlib import Path

import keras

from ..errors import InputError
from ..model_files import check_keras_archive
from .architecture import model_from_keras2_config
from .files import load_legacy_h5, load_yaml_file
from .optimizer import ITERATIONS
from .safety import (get_dataset, get_group, open_h5, parse_json, parse_keras2_yaml, read_names,
                     read_text_attribute, read_text_file)

KINDS = {
    "full-model-h5": "Keras 2 full model (HDF5, model.save)",
    "weights-h5": "Keras 2 weights only (HDF5, model.save_weights)",
    "yaml": "Keras 2 architecture (YAML, model.to_yaml)",
    "json": "Keras 2 architecture (JSON, model.to_json)",
    "keras": "Keras 3 model (.keras archive)",
}
YAML_SUFFIXES, JSON_SUFFIXES = (".yaml", ".yml"), (".json",)
KERAS_METADATA = "metadata.json"

# Optimizer variable names, by the Keras that wrote them (only names are looked at).
_NAMINGS = (  # (pattern every moment's name matches, what wrote it)
    (re.compile(r"(^|/)Variable(_\d+)?(:0)?$"), "numbered Variable_N (Keras 2.0-2.2 on TensorFlow)"),
    (re.compile(r"^[^/]+/(m|v|vhat)/"), "Optimizer/m/WEIGHT (tf.keras 2.11+)"),
    (re.compile(r"/(m|v|vhat)(:0)?$"), "Optimizer/WEIGHT/m (tf.keras 2.0-2.10)"),
)


def inspect_model_file(path) -> dict:
    """Everything ``legacy inspect`` reports about ``path``, as plain JSON-able values.

    Keys: ``file``, ``kind`` (a key of ``KINDS``), ``description``, ``keras_version``,
    ``backend``, ``model_class``, ``layers`` (``name``, ``class``, ``parameters``;
    ``None`` where the file does not say), ``parameters``, ``input_shapes``,
    ``features`` (dialect notes), ``training`` (``optimizer`` ``{class_name, config}``,
    ``loss``, ``metrics``, ``optimizer_weights``: arrays in the file, or ``None``) and
    ``load`` (see ``dry_run``). A file that is no model file at all is an ``InputError``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        facts = _keras_archive_facts(path)
    elif suffix in YAML_SUFFIXES + JSON_SUFFIXES:
        facts = _text_facts(path, "json" if suffix in JSON_SUFFIXES else "yaml")
    else:
        facts = _h5_facts(path)
    facts["description"] = KINDS[facts["kind"]]
    facts["load"], model = _dry_run(path, facts["kind"], facts.pop("model_config"))
    if facts["kind"] == "keras" and model is not None:  # Keras reads the archive: its layers are the model's
        facts["model_class"] = "Sequential" if isinstance(model, keras.Sequential) else "Model"
        facts["layers"] = [{"name": layer.name, "class": type(layer).__name__, "parameters": None}
                           for layer in model.layers]
    if facts["kind"] in ("keras", "yaml", "json") and model is not None:  # no weights in the file to count
        built = {layer.name: layer.count_params() for layer in model.layers}
        for layer in facts["layers"]:
            layer["parameters"] = built.get(layer["name"])
    if facts["parameters"] is None:  # no weights in the file: count what the architecture builds
        facts["parameters"] = facts["load"]["parameters"]
    return {"file": str(path), **facts}


# ---------------------------------------------------------------------------
# Static facts
# ---------------------------------------------------------------------------

def _facts(kind, keras_version=None, backend=None, model_config=None) -> dict:
    layers = _config_layers(model_config)
    facts = {"kind": kind, "keras_version": keras_version, "backend": backend,
             "model_class": model_config.get("class_name") if isinstance(model_config, dict) else None,
             "layers": layers, "parameters": None, "input_shapes": _input_shapes(layers),
             "features": _config_features(model_config, layers, backend), "training": None,
             "model_config": model_config}
    for layer in layers:
        del layer["config"]  # looked at; not reported
    return facts


def _h5_facts(path: Path) -> dict:
    with open_h5(path) as f:
        if "model_config" in f.attrs:
            model_config = parse_json(read_text_attribute(f, "model_config", path), path, "model_config")
            weights = get_group(f, "model_weights", path, "the file")
            kind = "full-model-h5"
        elif "layer_names" in f.attrs:
            model_config, weights, kind = None, f, "weights-h5"
        else:
            raise InputError(path, "an HDF5 file with neither a model_config nor a layer_names attribute: "
                                   "not a Keras 2 model or weights file")
        facts = _facts(kind, _text_attribute(f, weights, "keras_version", path),
                       _text_attribute(f, weights, "backend", path), model_config)
        counts = _weight_counts(weights, path)
        if kind == "weights-h5":
            facts["layers"] = [{"name": name, "class": None, "parameters": count} for name, count in counts.items()]
        for layer in facts["layers"]:
            layer["parameters"] = counts.get(layer["name"], 0)
        facts["parameters"] = sum(counts.values())
        if "training_config" in f.attrs:
            training = parse_json(read_text_attribute(f, "training_config", path), path, "training_config")
            facts["training"] = _training(training, f, path, facts["features"])
    return facts


def _text_attribute(f, weights, name: str, source):
    """A version attribute of the file, or of its weights group (where some writers put it), if any."""
    for obj in (f, weights):
        if name in obj.attrs:
            return read_text_attribute(obj, name, source)
    return None


def _weight_counts(group, source) -> dict:
    """Parameters per layer, from the declared shapes of its datasets (nothing is read)."""
    counts = {}
    for name in read_names(group, "layer_names", source):
        layer = get_group(group, name, source, "layer_names")
        counts[name] = sum(math.prod(get_dataset(layer, weight, source, f"layer {name!r}").shape)
                           for weight in read_names(layer, "weight_names", source))
    return counts


def _training(training, f, source, features: list) -> dict:
    if not isinstance(training, dict):
        raise InputError(source, "training_config is not a mapping")
    optimizer = training.get("optimizer_config")
    arrays = None
    if "optimizer_weights" in f:
        names = read_names(get_group(f, "optimizer_weights", source, "the file"), "weight_names", source)
        arrays = len(names)
        features += _optimizer_naming(names)
    return {"optimizer": optimizer, "loss": training.get("loss"), "metrics": training.get("metrics"),
            "optimizer_weights": arrays}


def _optimizer_naming(names: list) -> list:
    if not names:
        return []
    counter = "with" if any(ITERATIONS.search(name) for name in names) else "without"
    moments = [name for name in names if not ITERATIONS.search(name)]
    style = next((style for pattern, style in _NAMINGS if moments and all(map(pattern.search, moments))),
                 "named after the weights they follow")
    return [f"optimizer weights {style}, {counter} an iterations variable"]


def _text_facts(path: Path, kind: str) -> dict:
    text = read_text_file(path)
    model_config = parse_json(text, path, "the architecture") if kind == "json" else parse_keras2_yaml(text, path)
    if not isinstance(model_config, dict):
        raise InputError(path, "not a Keras model configuration (no 'class_name' at the top)")
    facts = _facts(kind, _string(model_config.get("keras_version")), _string(model_config.get("backend")),
                   model_config)
    tags = sorted(set(re.findall(r"!!python/\w+", text)))
    if tags:
        facts["features"].append(f"YAML tags {', '.join(tags)} (Keras 2's to_yaml; read without running code)")
    return facts


def _keras_archive_facts(path: Path) -> dict:
    from ..loading import count_keras_parameters  # loading imports this package; it is needed only here

    check_keras_archive(path, count_keras_parameters)  # caps every member's size before one is read
    with zipfile.ZipFile(path) as archive:
        metadata = {}
        if KERAS_METADATA in archive.namelist():
            try:
                metadata = json.loads(archive.read(KERAS_METADATA))
            except ValueError:
                raise InputError(path, f"its {KERAS_METADATA} is not valid JSON") from None
    return _facts("keras", _string(metadata.get("keras_version")) if isinstance(metadata, dict) else None)


def _string(value):
    return value if isinstance(value, str) else None


def _config_layers(model_config) -> list:
    """``[{name, class, parameters}]`` of the model's own layers, as its config lists them."""
    if not isinstance(model_config, dict):
        return []
    config = model_config.get("config")
    entries = config if isinstance(config, list) else config.get("layers") if isinstance(config, dict) else None
    layers = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            layer_config = entry.get("config") if isinstance(entry.get("config"), dict) else {}
            name = layer_config.get("name", entry.get("name"))
            layers.append({"name": _string(name), "class": _string(entry.get("class_name")), "parameters": None,
                           "config": layer_config})
    return layers


def _input_shapes(layers: list) -> list:
    """Declared input shapes: each ``InputLayer``'s, or the ``batch_input_shape`` a Sequential's first layer kept."""
    shapes = []
    for i, layer in enumerate(layers):
        config = layer["config"]
        shape = config.get("batch_input_shape", config.get("batch_shape"))
        if isinstance(shape, (list, tuple)) and (layer["class"] == "InputLayer" or i == 0):
            shapes.append(list(shape))
    return shapes


def _config_features(model_config, layers: list, backend) -> list:
    """Notes on the Keras 2 dialect the config is written in."""
    features = []
    if backend == "theano":
        features.append("Theano backend (convolution kernels flipped)")
    if isinstance(model_config, dict) and model_config.get("class_name") == "Sequential":
        if isinstance(model_config.get("config"), list):
            features.append("Sequential as a bare list of layers (Keras 2 before 2.2.3)")
        if not _input_shapes(layers):
            features.append("no batch_input_shape: the input shape is known only once the model is built")

    def named(test) -> str:
        return ", ".join(str(layer["name"]) for layer in layers if test(layer))

    checks = (
        ("channels_first layers", lambda layer: layer["config"].get("data_format") == "channels_first"),
        ("CuDNN recurrent layers (CuDNNLSTM/CuDNNGRU)", lambda layer: layer["class"] in ("CuDNNLSTM", "CuDNNGRU")),
        ("GRU without reset_after (Keras 2's default; tf.keras 2 resets after)",
         lambda layer: layer["class"] == "GRU" and not layer["config"].get("reset_after", False)),
        ("hard_sigmoid activations (Keras 2's recurrent default)",
         lambda layer: "hard_sigmoid" in (layer["config"].get("activation"),
                                          layer["config"].get("recurrent_activation"))),
    )
    for label, test in checks:
        names = named(test)
        if names:
            features.append(f"{label}: {names}")
    return features


# ---------------------------------------------------------------------------
# The dry run
# ---------------------------------------------------------------------------

def dry_run(path, kind: str, model_config=None) -> dict:
    """Load ``path`` for real and say what came back.

    ``{architecture, weights, optimizer_state}``, each ``{"restored": bool, "note": str | None}``
    (the note: why not, or what), plus the loaded model's ``parameters``,
    ``input_shapes`` and ``output_shapes`` (``None`` when nothing loaded).
    A full-model file loads with its training config, else (say with a custom
    metric) without it, as ``predict`` and ``evaluate`` load it.
    """
    return _dry_run(path, kind, model_config)[0]


def _dry_run(path, kind: str, model_config) -> tuple[dict, object]:
    from ..predict import model_shapes

    result = {part: {"restored": False, "note": None} for part in ("architecture", "weights", "optimizer_state")}
    result.update(parameters=None, input_shapes=None, output_shapes=None)
    model = None
    try:
        if kind == "full-model-h5":
            model_from_keras2_config(model_config, path)  # says which part failed: the architecture ...
            result["architecture"]["restored"] = True
            model = _load_h5(path, result)  # ... or the weights, or the training state
        elif kind == "keras":
            model = _load_keras(path, result)
        elif kind == "weights-h5":
            result["architecture"]["note"] = "a weights file holds no architecture"
            result["weights"]["note"] = ("loads onto the architecture it was saved from: mnist-mb legacy import "
                                         "ARCH.yaml --weights FILE")
        else:
            model = load_yaml_file(path) if kind == "yaml" else model_from_keras2_config(model_config, path)
            result["architecture"]["restored"] = True
            result["weights"]["note"] = "an architecture file holds no weights (give them with --weights)"
            result["optimizer_state"]["note"] = "an architecture file holds no training state"
    except InputError as err:
        part = "weights" if result["architecture"]["restored"] else "architecture"
        result[part]["note"] = f"refused: {err.problem}"
    if model is not None:
        inputs, outputs = model_shapes(model)
        result.update(parameters=model.count_params(), input_shapes=[list(s) for s in inputs],
                      output_shapes=[list(s) for s in outputs])
    for part in ("weights", "optimizer_state"):
        if not result["architecture"]["restored"] and result[part]["note"] is None:
            result[part]["note"] = "needs the architecture"
    return result, model


def _load_h5(path, result: dict):
    left_out = io.StringIO()
    try:
        with contextlib.redirect_stderr(left_out):  # what a full load leaves out (errors.notice): for the note
            model = load_legacy_h5(path, compile=True)
    except InputError as err:
        model = load_legacy_h5(path, compile=False)  # an InputError now is about the weights
        result["weights"]["restored"] = True
        result["optimizer_state"]["note"] = (f"{err.problem} (predict and evaluate load without it; training "
                                             "restarts its optimizer)")
        return model
    result["weights"]["restored"] = True
    _note_optimizer(model, result, saved_state="optimizer_weights")
    notices = [line.partition(": ")[2] for line in left_out.getvalue().splitlines() if line.strip()]
    if notices:
        result["optimizer_state"]["note"] = "; ".join([result["optimizer_state"]["note"], *notices])
    return model


def _load_keras(path, result: dict):
    from ..loading import load_saved_model

    try:
        model = load_saved_model(path, compile=True)
    except InputError:
        model = load_saved_model(path, compile=False)
    result["architecture"]["restored"] = result["weights"]["restored"] = True
    _note_optimizer(model, result, saved_state="optimizer variables")
    return model


def _note_optimizer(model, result: dict, saved_state: str) -> None:
    optimizer = getattr(model, "optimizer", None)
    state = result["optimizer_state"]
    if optimizer is None:
        state["note"] = "the file holds no training config (saved uncompiled)"
    elif not optimizer.built or int(optimizer.iterations) == 0:
        state["note"] = (f"{type(optimizer).__name__} as configured, starting at step 0 (the file holds no "
                         f"{saved_state} from a training step)")
    else:
        state.update(restored=True, note=f"{type(optimizer).__name__} at step {int(optimizer.iterations)}")


# ---------------------------------------------------------------------------
# The text page
# ---------------------------------------------------------------------------

def format_inspection(report: dict) -> str:
    """A short readable page of ``inspect_model_file``'s report."""
    load = report["load"]

    def shapes(values) -> str:
        return " and ".join(str(tuple(shape)) for shape in values) if values else "unknown"

    written = ", ".join(part for part in (report["keras_version"] and f"Keras {report['keras_version']}",
                                          report["backend"] and f"backend {report['backend']}") if part)
    lines = [str(report["file"]),
             f"  kind          {report['description']}",
             f"  written by    {written or 'not recorded'}"]
    if report["model_class"] or report["layers"]:
        parameters = f"{report['parameters']:,} parameters" if report["parameters"] is not None else \
            "parameters unknown"
        model = f"{report['model_class']}: " if report["model_class"] else ""
        lines.append(f"  model         {model}{len(report['layers'])} layers, {parameters}")
    declared = report["input_shapes"] or load["input_shapes"]
    lines.append(f"  input         {shapes(declared) if declared else 'not recorded in the file'}")
    if load["output_shapes"]:
        lines.append(f"  output        {shapes(load['output_shapes'])}")
    training = report["training"]
    if training:
        optimizer = training["optimizer"] if isinstance(training["optimizer"], dict) else {}
        state = training["optimizer_weights"]
        config = optimizer.get("config")
        if isinstance(config, dict):  # the page leaves out options that are off
            config = {key: value for key, value in config.items() if value is not None}
        lines += [f"  optimizer     {optimizer.get('class_name')} {json.dumps(config)}",
                  f"                optimizer_weights: {f'{state} arrays' if state is not None else 'none'}",
                  f"  loss          {json.dumps(_names(training['loss']))}",
                  f"  metrics       {json.dumps(_names(training['metrics']))}"]
    for i, feature in enumerate(report["features"]):
        lines.append(f"  {'dialect' if i == 0 else '':<12}  {feature}")
    if report["layers"]:
        width = max(len(str(layer["name"])) for layer in report["layers"])
        lines.append("  layers")
        for layer in report["layers"]:
            count = "" if layer["parameters"] is None else f"{layer['parameters']:>12,}"
            lines.append(f"    {str(layer['name']):<{width}}  {str(layer['class'] or ''):<20}{count}")
    lines.append("loading it here restores")
    for part in ("architecture", "weights", "optimizer_state"):
        outcome = load[part]
        note = f": {outcome['note']}" if outcome["note"] else ""
        lines.append(f"  {part.replace('_', ' ') + ':':<17}{'yes' if outcome['restored'] else 'no'}{note}")
    return "\n".join(lines)


def _names(value):
    """Losses and metrics as the names they were given (tf.keras wrapped each in a ``{class_name, config}``)."""
    if isinstance(value, list):
        return [_names(item) for item in value]
    if isinstance(value, dict):
        config = value.get("config")
        if "class_name" in value and isinstance(config, dict) and "name" in config:
            return config["name"]
        return {key: _names(item) for key, item in value.items()}
    return value
