"""Keras 2 files from other projects: ``legacy inspect``, loading without the optimizer, non-MNIST models, and
files that are not what their names say."""

import json
import re

import h5py
import numpy as np
import pytest

from conftest import assert_clean_error, cli, import_tf_keras
from mnist_multibackend import data, legacy
from mnist_multibackend.errors import InputError
from mnist_multibackend.evaluation import evaluate
from mnist_multibackend.legacy.inspection import format_inspection, inspect_model_file
from mnist_multibackend.loading import load_saved_model
from mnist_multibackend.predict import check_classifier

REPORT_KEYS = {"file", "kind", "description", "keras_version", "backend", "model_class", "layers", "parameters",
               "input_shapes", "features", "training", "load"}
LOAD_KEYS = {"architecture", "weights", "optimizer_state", "parameters", "input_shapes", "output_shapes"}


def fmeasure(y_true, y_pred):
    """A metric defined in a notebook, as Keras 2 projects did before Keras had F1: the file names it only."""
    return y_pred[:, 0] * 0 + 1


def my_loss(y_true, y_pred):
    return (y_true - y_pred) ** 2


def save_tf_keras(model, path, *, loss="categorical_crossentropy", metrics=("accuracy", fmeasure), fit=True):
    """Compile ``model`` (tf_keras) as a notebook would, take one step so it has optimizer state, save it."""
    model.compile(optimizer="adam", loss=loss, metrics=list(metrics))
    if fit:
        x = [np.random.default_rng(0).random((4, *s[1:]), np.float32) for s in model.input_shape] \
            if isinstance(model.input_shape, list) else np.random.default_rng(0).random((4, *model.input_shape[1:]))
        model.fit(x, np.eye(model.output_shape[-1])[np.arange(4) % model.output_shape[-1]], verbose=0)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def tf_keras():
    return import_tf_keras()


@pytest.fixture(scope="module")
def notebook_files(tf_keras, tmp_path_factory):
    """tf_keras (Keras 2.21's API) full-model files of a small MNIST classifier compiled with a metric function
    (``fmeasure``) and with a loss function (``my_loss``) of the notebook that trained them; and the model."""
    folder = tmp_path_factory.mktemp("notebook")
    layers = tf_keras.layers

    def classifier():
        return tf_keras.Sequential([layers.Input((28, 28, 1)), layers.Conv2D(4, 3, activation="relu", name="conv"),
                                    layers.Flatten(name="flat"), layers.Dense(10, activation="softmax", name="out")])

    models = {"metric": classifier(), "loss": classifier()}
    return {"metric": save_tf_keras(models["metric"], folder / "metric.h5"),
            "loss": save_tf_keras(models["loss"], folder / "loss.h5", loss=my_loss, metrics=["accuracy"]),
            "models": models}


@pytest.fixture(scope="module")
def cifar_h5(tf_keras, tmp_path_factory):
    """A tf_keras full model that is no MNIST classifier: 32x32 colour images to 5 classes."""
    layers = tf_keras.layers
    inputs = layers.Input((32, 32, 3), name="image")
    x = layers.Conv2D(2, 3, name="conv")(layers.Rescaling(1 / 255, name="scale")(inputs))
    outputs = layers.Dense(5, activation="softmax", name="out")(layers.GlobalAveragePooling2D(name="pool")(x))
    return save_tf_keras(tf_keras.Model(inputs, outputs), tmp_path_factory.mktemp("cifar") / "cifar.h5",
                         metrics=["accuracy"])


# --------------------------------------------------------------------------- predict and evaluate need no optimizer

@pytest.mark.parametrize("which", ["metric", "loss"])
def test_files_naming_notebook_functions_predict_and_evaluate(notebook_files, which, mnist, mnist_dir):
    """tf_keras wrote the function's name in training_config (metrics [[..., MeanMetricWrapper fn 'fmeasure']] or
    loss 'my_loss'); Keras 3 cannot resolve it. Predict and evaluate load architecture and weights only."""
    path, reference = notebook_files[which], notebook_files["models"][which]
    images = data.as_model_input(mnist.x_test[:64])
    model = load_saved_model(path, compile=False)
    np.testing.assert_allclose(np.asarray(model.predict_on_batch(images)), reference.predict_on_batch(images),
                               atol=1e-5)
    scored = evaluate(path, mnist_dir)
    assert 0 <= scored["accuracy"] <= 1 and np.isfinite(scored["loss"]) and scored["test_images"] == 10_000


def test_inspect_says_what_the_training_config_leaves_out(notebook_files):
    """A notebook's metric is left out and the optimizer state still loads (the note names the metric); a
    notebook's loss stops the optimizer state, since the model cannot train without it, and the note says so."""
    report = inspect_model_file(notebook_files["metric"])
    assert report["load"]["architecture"]["restored"] and report["load"]["weights"]["restored"]
    state = report["load"]["optimizer_state"]
    assert state["restored"] and "at step" in state["note"] and "'fmeasure'" in state["note"], state
    report = inspect_model_file(notebook_files["loss"])
    state = report["load"]["optimizer_state"]
    assert report["load"]["weights"]["restored"] and not state["restored"] and "'my_loss'" in state["note"], state


# --------------------------------------------------------------------------- legacy inspect

def test_inspect_json_schema_from_a_tf_keras_file(notebook_files):
    """tf_keras 2.21 writes keras_version 2.21.0, a Sequential with an InputLayer, and Adam state named
    iteration, Adam/m/..., Adam/v/...: everything is reported from names and declared shapes."""
    report = inspect_model_file(notebook_files["metric"])
    json.dumps(report)  # plain values only
    assert set(report) == REPORT_KEYS and set(report["load"]) == LOAD_KEYS
    reference = notebook_files["models"]["metric"]
    assert (report["kind"], report["keras_version"], report["backend"], report["model_class"]) == \
        ("full-model-h5", "2.21.0", "tensorflow", "Sequential")
    assert [(layer["name"], layer["class"], layer["parameters"]) for layer in report["layers"]][1:] == \
        [("conv", "Conv2D", 40), ("flat", "Flatten", 0), ("out", "Dense", 26 * 26 * 4 * 10 + 10)]
    assert report["layers"][0]["class"] == "InputLayer"
    assert report["parameters"] == reference.count_params() == report["load"]["parameters"]
    assert report["input_shapes"] == [[None, 28, 28, 1]] and report["load"]["output_shapes"] == [[None, 10]]
    training = report["training"]
    assert training["optimizer"]["class_name"] == "Custom>Adam" and training["loss"] == "categorical_crossentropy"
    assert "fmeasure" in json.dumps(training["metrics"])
    assert training["optimizer_weights"] == 1 + 2 * len(reference.trainable_weights)
    assert "optimizer weights Optimizer/m/WEIGHT (tf.keras 2.11+), with an iterations variable" in report["features"]


def test_inspect_the_original_files(seed_dir):
    """Keras 2.1.2 (the original project) wrote Variable_N optimizer weights and YAML with python tags."""
    full = inspect_model_file(seed_dir / legacy.H5_NAME)
    assert full["parameters"] == 330_730 and full["training"]["optimizer_weights"] == 41
    assert any("Variable_N" in f for f in full["features"])
    assert full["load"]["optimizer_state"] == {"restored": True, "note": "Adam at step 5628"}
    page = format_inspection(full)
    assert "Keras 2.1.2, backend tensorflow" in page and re.search(r"optimizer state: +yes", page)
    weights = inspect_model_file(seed_dir / legacy.WEIGHTS_NAME)
    assert weights["kind"] == "weights-h5" and weights["parameters"] == 330_730
    assert not weights["load"]["architecture"]["restored"]
    arch = inspect_model_file(seed_dir / legacy.YAML_NAME)
    assert arch["kind"] == "yaml" and arch["parameters"] == 330_730 and arch["input_shapes"] == [[None, 28, 28, 1]]
    assert any("!!python/tuple" in f for f in arch["features"])


def test_inspect_a_json_architecture_and_a_keras_3_file(notebook_files, tmp_path):
    """tf_keras's to_json (Keras 2.21) and Keras 3's .keras: the kinds besides Keras 2 HDF5 and YAML."""
    import keras

    reference = notebook_files["models"]["metric"]
    architecture = tmp_path / "model.json"
    architecture.write_text(reference.to_json())
    report = inspect_model_file(architecture)
    assert (report["kind"], report["keras_version"], report["model_class"]) == ("json", "2.21.0", "Sequential")
    assert report["parameters"] == reference.count_params() and report["load"]["architecture"]["restored"]
    assert not report["load"]["weights"]["restored"]

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="out")])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((2, 3)), np.ones((2, 2)), verbose=0)
    model.save(tmp_path / "model.keras")
    report = inspect_model_file(tmp_path / "model.keras")
    assert (report["kind"], report["keras_version"]) == ("keras", keras.__version__)
    assert report["layers"] == [{"name": "out", "class": "Dense", "parameters": 8}]
    assert report["load"]["optimizer_state"] == {"restored": True, "note": "Adam at step 1"}


def test_inspect_names_old_dialects(tf_keras, tmp_path):
    """Features of Keras 2 releases tf_keras no longer writes are forged with h5py on a tf_keras file: the
    bare-list Sequential of Keras < 2.2.3 without batch_input_shape, and the Theano backend attribute. GRU
    with reset_after off and hard_sigmoid are Keras 2's defaults (tf_keras still writes them when asked)."""
    layers = tf_keras.layers
    model = tf_keras.Sequential([layers.Input((5, 3)), layers.GRU(2, reset_after=False,
                                                                 recurrent_activation="hard_sigmoid", name="gru"),
                                 layers.Dense(2, name="out")])
    path = save_tf_keras(model, tmp_path / "gru.h5", metrics=[], fit=False)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        entries = [entry for entry in config["config"]["layers"] if entry["class_name"] != "InputLayer"]
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": entries})
        f.attrs["backend"] = "theano"
    features = "\n".join(inspect_model_file(path)["features"])
    for fragment in ("Theano backend", "Sequential as a bare list", "no batch_input_shape",
                     "GRU without reset_after (Keras 2's default", "hard_sigmoid activations (Keras 2's recurrent default): gru"):
        assert fragment in features, (fragment, features)


def test_inspect_reports_a_lambda_layer_as_the_refusal(tf_keras, tmp_path):
    """tf_keras saves a Lambda's Python code in the file; inspect lists the layers and quotes the refusal, and
    the command prints its page, then the refusal as its one error line (exit status 2), nothing run."""
    layers = tf_keras.layers
    inputs = layers.Input((4,))
    doubled = layers.Lambda(lambda x: x * 2, name="double")(inputs)
    model = tf_keras.Model(inputs, layers.Dense(2, name="out")(doubled))
    report = inspect_model_file(save_tf_keras(model, tmp_path / "lambda.h5", metrics=[], fit=False))
    assert [layer["class"] for layer in report["layers"]] == ["InputLayer", "Lambda", "Dense"]
    assert not report["load"]["architecture"]["restored"] and not report["load"]["weights"]["restored"]
    assert "refused: layer 'double' names class 'Lambda'" in report["load"]["architecture"]["note"]
    assert "architecture:    no: refused: layer 'double'" in format_inspection(report)
    result = cli("legacy", "inspect", str(tmp_path / "lambda.h5"))
    assert_clean_error(result, "lambda.h5", "'Lambda'")
    assert "architecture:    no: refused" in result.stdout


# --------------------------------------------------------------------------- files that are something else

LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 4238488\n")
HTML_PAGE = "\n\n<!DOCTYPE html>\n<html lang=\"en\" data-color-mode=\"auto\">\n<head><title>model.h5</title>"
DISGUISES = {
    "html.h5": (HTML_PAGE, "is an HTML page, not an HDF5 file (downloaded from a web page rather than the raw file?)"),
    "lfs.h5": (LFS_POINTER, "is a Git LFS pointer to a 4,238,488-byte file, not the file itself (run git lfs pull)"),
    "empty.h5": ("", "is an empty file, not an HDF5 file"),
    "renamed.h5": (b"PK\x03\x04\x14\0\0\0", ("is a zip archive, not an HDF5 file (a Keras 3 model? give it a "
                                              ".keras name)")),
    "arch.h5": ('{"class_name": "Sequential", "config": []}', ("not an HDF5 file (an architecture from to_json()? "
                                                               "give it a .json name)")),
    "arch-yaml.h5": ("class_name: Model\nconfig: {}\n", "is YAML text"),
    "lfs.yaml": (LFS_POINTER, "is a Git LFS pointer to a 4,238,488-byte file"),
    "page.json": (HTML_PAGE, "is an HTML page, not a YAML or JSON architecture"),
    "model.yaml": (b"\x89HDF\r\n\x1a\n\0\0\0\0", "is an HDF5 file, not a YAML or JSON architecture"),
    "lfs.keras": (LFS_POINTER, "is a Git LFS pointer"),
    "model.keras": (b"\x89HDF\r\n\x1a\n\0\0\0\0", "is an HDF5 file, not a .keras archive"),
}


@pytest.mark.parametrize("name", DISGUISES)
def test_a_file_that_is_something_else_is_one_line_saying_what(name, tmp_path):
    """What a download or a checkout leaves in place of a model file, as every loader and inspect meet it."""
    content, fragment = DISGUISES[name]
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    loaders = [inspect_model_file]
    loaders += [legacy.load_legacy_h5, load_saved_model] if name.endswith(".h5") else \
        [load_saved_model] if name.endswith(".keras") else [legacy.load_yaml_file]
    for load in loaders:
        with pytest.raises(InputError) as caught:
            load(path)
        assert str(caught.value).startswith(f"{path}: ") and fragment in str(caught.value), load
        assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- models that are not MNIST's

def test_a_non_mnist_model_loads_and_is_refused_naming_its_shapes(cifar_h5, mnist_dir):
    """A tf_keras image model (32x32x3 -> 5) loads whole; scoring it on MNIST is refused in one line."""
    model = load_saved_model(cifar_h5)
    with pytest.raises(InputError, match=re.escape("its input (None, 32, 32, 3), output (None, 5); evaluate, "
                                                   "predict and report need input (None, 28, 28, 1)")):
        check_classifier(model, cifar_h5)
    with pytest.raises(InputError, match=re.escape("input (None, 32, 32, 3)")):
        evaluate(cifar_h5, mnist_dir)


# --------------------------------------------------------------------------- through the command line

def test_cli_inspect_json_and_predict_with_a_notebook_metric(notebook_files, mnist, tmp_path):
    """``legacy inspect --json`` is one JSON object; ``predict`` reads the file whose metric Keras cannot name."""
    result = cli("legacy", "inspect", notebook_files["metric"], "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert set(report) == REPORT_KEYS and report["load"]["weights"]["restored"]
    digits = tmp_path / "digits.npy"
    np.save(digits, mnist.x_test[:3])
    result = cli("predict", notebook_files["metric"], digits)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 3


def test_cli_import_says_the_shapes_and_evaluate_refuses_a_non_mnist_model(cifar_h5, mnist_dir, tmp_path):
    result = cli("legacy", "import", cifar_h5, "--out", tmp_path / "cifar.keras")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the model's input (None, 32, 32, 3), output (None, 5)" in result.stdout
    assert_clean_error(cli("evaluate", cifar_h5, "--data", mnist_dir), "cifar.h5: not a digit classifier",
                       "input (None, 32, 32, 3), output (None, 5)")
