"""Every architecture dialect Keras 2 wrote loads here and computes what Keras 2 computed.

Each model is built in ``tf_keras`` 2.21 (real Keras 2), saved the way a Keras
2 release saved it (full-model HDF5, ``to_json()``, ``to_yaml()`` text, weights
HDF5; older dialects forged from it where tf_keras no longer writes them), loaded
here, and compared with tf_keras's own predictions on fixed random inputs. The
loaded model then goes through a ``.keras`` file (``loading.load_saved_model``,
safe mode) and back to Keras 2 (``model_to_json``, read by tf_keras).
"""

import json
import re

import h5py
import keras
import numpy as np
import pytest
import yaml

from conftest import import_tf_keras
from mnist_multibackend import legacy
from mnist_multibackend.errors import InputError
from mnist_multibackend.loading import load_saved_model

ATOL = 1e-5  # float32


@pytest.fixture(scope="module")
def tf_keras():
    return import_tf_keras()


def random_inputs(theirs, seed=0):
    """Fixed random inputs for each of the model's inputs: token ids for integer inputs, normals otherwise."""
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor in theirs.inputs:
        shape = (4, *tensor.shape[1:])
        if tensor.dtype.is_integer:
            arrays.append(rng.integers(0, 20, shape).astype("int32"))
        else:
            arrays.append(rng.normal(0, 2, shape).astype("float32"))
    return arrays


def predictions(model, inputs) -> list:
    """The model's outputs in inference mode, called directly (predict would compile it first: slower here)."""
    out = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in (out if isinstance(out, (list, tuple)) else [out])]


def assert_same_outputs(expected: list, model, inputs, what: str) -> None:
    actual = predictions(model, inputs)
    assert len(actual) == len(expected), what
    for e, a in zip(expected, actual):
        np.testing.assert_allclose(a, e, rtol=0, atol=ATOL, err_msg=what)


def assert_computes_like_keras2(theirs, ours, tmp_path, tf_keras):
    """``ours`` (loaded here) gives tf_keras's outputs; so does its ``.keras`` file reloaded in safe mode; and
    tf_keras, reading back what this project writes for Keras 2, gives them too."""
    inputs = random_inputs(theirs)
    expected = predictions(theirs, inputs)
    assert_same_outputs(expected, ours, inputs, "loaded here")
    ours.save(tmp_path / "saved.keras")
    assert_same_outputs(expected, load_saved_model(tmp_path / "saved.keras", compile=False), inputs, ".keras")
    legacy.save_weights_h5(ours, tmp_path / "written-weights.h5")
    again = tf_keras.models.model_from_json(legacy.model_to_json(ours))
    again.load_weights(tmp_path / "written-weights.h5")
    assert_same_outputs(expected, again, inputs, "tf_keras reading model_to_json")


# --- models built in tf_keras, covering the layer families ----------------------------------------

def text_model(tf_keras):
    """Embedding, an LSTM with standalone Keras 2's defaults (hard_sigmoid gates, implementation 1),
    TimeDistributed, MultiHeadAttention, RNN over a cell and over stacked cells, a Bidirectional GRU
    (tf_keras's reset_after=True)."""
    layers = tf_keras.layers
    tokens = tf_keras.Input((7,), dtype="int32", name="tokens")
    x = layers.Embedding(20, 6, name="embed")(tokens)
    x = layers.LSTM(5, return_sequences=True, recurrent_activation="hard_sigmoid", implementation=1,
                    name="lstm")(x)
    x = layers.TimeDistributed(layers.Dense(6, activation="hard_sigmoid"), name="per_step")(x)
    x = layers.MultiHeadAttention(2, 3, name="attend")(x, x)
    x = layers.RNN(layers.LSTMCell(3, recurrent_activation="hard_sigmoid"), return_sequences=True, name="cell")(x)
    x = layers.RNN([layers.SimpleRNNCell(3), layers.GRUCell(3)], return_sequences=True, name="stacked")(x)
    x = layers.Bidirectional(layers.GRU(4, recurrent_activation="hard_sigmoid"), name="bigru")(x)
    x = layers.Activation("hard_sigmoid", name="gate")(x)
    return tf_keras.Model(tokens, layers.Dense(3, activation="softmax", name="out")(x))


def vision_model(tf_keras):
    """Convolutions of every kind, normalisation, noise and dropout options, pooling with strides None,
    activation layers (ThresholdedReLU, LeakyReLU alpha), a shared layer (node_index 1), merges, two outputs."""
    layers = tf_keras.layers
    image = tf_keras.Input((8, 8, 2), name="image")
    x = layers.RandomFlip(name="flip")(image)  # an identity when predicting; its config names tf's RNG
    x = layers.Conv2D(4, 3, padding="same", activation="hard_sigmoid", name="conv")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.SpatialDropout2D(0.2, name="spatial_drop")(x)
    x = layers.GaussianNoise(0.1, name="noise")(x)
    x = layers.SeparableConv2D(4, 3, padding="same", name="separable")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = layers.LeakyReLU(0.1, name="leaky")(x)
    y = layers.Conv2DTranspose(4, 3, padding="same", name="transpose")(x)
    y = layers.ThresholdedReLU(0.05, name="thresholded")(y)
    x = layers.Add(name="add")([x, y])
    x = layers.PReLU(name="prelu")(x)
    x = layers.MaxPooling2D(name="max_pool")(x)
    x = layers.ELU(0.5, name="elu")(x)
    x = layers.AveragePooling2D(padding="same", strides=None, name="avg_pool")(x)
    x = layers.UpSampling2D(name="up")(x)
    x = layers.Cropping2D(1, name="crop")(layers.ZeroPadding2D(1, name="pad")(x))
    x = layers.ReLU(max_value=6.0, name="relu6")(x)
    x = layers.Dropout(0.3, noise_shape=(None, 1, 1, 4), name="drop")(x)
    pooled = layers.Concatenate(name="concat")([layers.GlobalAveragePooling2D(name="gap")(x),
                                                layers.Flatten(name="flat")(layers.GlobalMaxPooling2D(
                                                    keepdims=True, name="gmp")(x))])
    x = layers.LayerNormalization(name="ln")(pooled)
    shared = layers.Dense(8, activation="gelu", name="shared")
    x = layers.Multiply(name="mul")([shared(x), shared(layers.Activation("hard_sigmoid", name="hs")(x))])
    x = layers.Dense(5, activation="selu", kernel_initializer="lecun_normal", name="selu")(x)
    return tf_keras.Model(image, [layers.Softmax(name="probs")(x), layers.Dense(1, activation="swish", name="score")(x)])


def nested_model(tf_keras):
    """Two inputs, a nested Sequential and a nested functional model each called on both (Keras 2 numbered
    their calls 1 and 2, after their own graph's node 0), four outputs."""
    layers = tf_keras.layers
    inner = tf_keras.Sequential([layers.Dense(4, activation="tanh", input_shape=(3,)), layers.Dense(2)], name="inner")
    x = tf_keras.Input((3,), name="x")
    branch = tf_keras.Model(x, layers.Dense(2, activation="elu", name="branch_dense")(x), name="branch")
    a, b = tf_keras.Input((3,), name="a"), tf_keras.Input((3,), name="b")
    ya, yb = inner(a), inner(b)
    za, zb = branch(a), branch(b)
    summed = layers.Add(name="sum")([ya, yb, za])
    joined = layers.Concatenate(name="join")([ya, yb, zb, layers.Dense(2, name="side")(a)])
    return tf_keras.Model([a, b], [summed, joined, yb, zb])  # the last two straight from nested models


MODELS = {"text": text_model, "vision": vision_model, "nested": nested_model}


@pytest.mark.parametrize("kind", MODELS)
def test_full_model_h5_computes_like_tf_keras(kind, tf_keras, tmp_path):
    """tf_keras 2.21's model.save() (Functional config, ``module`` keys) of each layer family."""
    theirs = MODELS[kind](tf_keras)
    theirs.save(tmp_path / "theirs.h5")
    assert_computes_like_keras2(theirs, legacy.load_legacy_h5(tmp_path / "theirs.h5", compile=False), tmp_path,
                                tf_keras)


@pytest.mark.parametrize("kind", MODELS)
def test_json_architecture_with_weights_computes_like_tf_keras(kind, tf_keras, tmp_path):
    """model.to_json() plus model.save_weights() as every Keras 2 release wrote them; import_legacy takes .json."""
    theirs = MODELS[kind](tf_keras)
    (tmp_path / "arch.json").write_text(theirs.to_json())
    theirs.save_weights(tmp_path / "weights.h5")
    ours = legacy.import_legacy(tmp_path / "arch.json", weights=tmp_path / "weights.h5")
    assert_computes_like_keras2(theirs, ours, tmp_path, tf_keras)


def test_json_without_weights_is_one_line(tmp_path):
    (tmp_path / "arch.json").write_text("{}")
    with pytest.raises(InputError, match=r"arch\.json: a JSON file holds the architecture only; give its weights"):
        legacy.import_legacy(tmp_path / "arch.json")
    (tmp_path / "bad.json").write_text('{"class_name": "Sequential", "config": [')
    with pytest.raises(InputError, match=r"bad\.json: the architecture is not valid JSON"):
        legacy.load_json_file(tmp_path / "bad.json")


def keras2_yaml(theirs, **dump) -> str:
    """``to_yaml()`` as Keras 2 wrote it: ``yaml.dump`` of the config, whose tuples become ``!!python/tuple``."""
    document = {"class_name": type(theirs).__name__ if type(theirs).__name__ == "Sequential" else "Model",
                "config": theirs.get_config(), "keras_version": "2.1.2", "backend": "tensorflow"}
    return yaml.dump(document, **dump)


def test_yaml_with_python_tuples_anchors_and_aliases(tf_keras, tmp_path):
    """Keras 2.1's to_yaml(): ``!!python/tuple`` shapes, and an object met twice written once (&id001/*id001)."""
    theirs = vision_model(tf_keras)
    config = theirs.get_config()
    shared_initializer = config["layers"][2]["config"]["kernel_initializer"]
    config["layers"][-1]["config"]["kernel_initializer"] = shared_initializer  # PyYAML writes it as an alias
    text = yaml.dump({"class_name": "Model", "config": config, "keras_version": "2.1.2", "backend": "tensorflow"})
    assert "!!python/tuple" in text and "&id001" in text and "*id001" in text
    theirs.save_weights(tmp_path / "weights.h5")
    (tmp_path / "arch.yaml").write_text(text)
    ours = legacy.import_legacy(tmp_path / "arch.yaml", weights=tmp_path / "weights.h5")
    assert_computes_like_keras2(theirs, ours, tmp_path, tf_keras)


def test_yaml_appended_twice_loads_and_two_different_ones_are_refused(tf_keras, tmp_path):
    """Keras 2's to_yaml() text has no ``---``: written twice in append mode, every top-level key repeats
    (its anchors too); with ``---`` between them they are two documents. Equal repeats read as one."""
    theirs = nested_model(tf_keras)
    text = keras2_yaml(theirs)
    theirs.save_weights(tmp_path / "weights.h5")
    inputs = random_inputs(theirs)
    for joined in (text + text, text + "---\n" + text):
        model = legacy.load_weights_h5(legacy.model_from_yaml(joined, "twice.yaml"), tmp_path / "weights.h5")
        assert_same_outputs(predictions(theirs, inputs), model, inputs, "appended")
    assert_computes_like_keras2(theirs, model, tmp_path, tf_keras)
    other = keras2_yaml(nested_model(tf_keras))  # new layer names
    for joined, fragment in ((text + other, "is given twice with different values"),
                             (text + "---\n" + other, "holds 2 YAML documents that differ")):
        with pytest.raises(InputError) as caught:
            legacy.model_from_yaml(joined, "mixed.yaml")
        assert str(caught.value).startswith("mixed.yaml: ") and fragment in str(caught.value)
        assert "\n" not in str(caught.value)


def test_tf_contrib_keras_yaml_with_dtypes_in_initializers(tf_keras, tmp_path):
    """TF 1.1-1.3's tf.contrib.keras (keras_version 2.0.x-tf) serialized TensorFlow's initializers, with
    ``dtype`` (and Constant's ``verify_shape``) in their configs, which Keras 3's initializers refuse."""
    layers = tf_keras.layers
    theirs = tf_keras.Sequential([layers.Dense(4, activation="relu", input_shape=(3,), name="hidden",
                                               bias_initializer=tf_keras.initializers.Constant(0.1)),
                                  layers.Dense(2, name="out")])
    config = theirs.get_config()
    for layer in config["layers"]:
        for key, value in layer["config"].items():
            if key.endswith("_initializer"):
                value["config"]["dtype"] = "float32"
                if value["class_name"] == "Constant":
                    value["config"]["verify_shape"] = False
    text = yaml.dump({"class_name": "Sequential", "config": config["layers"], "keras_version": "2.0.6-tf",
                      "backend": "tensorflow"})
    assert text.count("dtype: float32") >= 6
    with pytest.raises(TypeError):  # what Keras 3 itself makes of such an initializer
        keras.initializers.get({"class_name": "Zeros", "config": {"dtype": "float32"}})
    theirs.save_weights(tmp_path / "weights.h5")
    (tmp_path / "arch.yaml").write_text(text)
    ours = legacy.import_legacy(tmp_path / "arch.yaml", weights=tmp_path / "weights.h5")
    assert_computes_like_keras2(theirs, ours, tmp_path, tf_keras)


# --- Sequential dialects -------------------------------------------------------------------------------

def small_sequential(tf_keras, **first):
    layers = tf_keras.layers
    return tf_keras.Sequential([layers.Dense(4, activation="hard_sigmoid", name="hidden", **first),
                                layers.Dropout(0.5, name="drop"), layers.Dense(2, name="out")], name="seq")


def test_sequential_as_a_bare_list_of_layers(tf_keras, tmp_path):
    """Keras <= 2.1 (2.2.3 moved to a dict): the layers themselves, the input shape on the first."""
    theirs = small_sequential(tf_keras, input_shape=(3,))
    layers = [entry for entry in theirs.get_config()["layers"] if entry["class_name"] != "InputLayer"]
    layers[0]["config"]["batch_input_shape"] = (None, 3)
    (tmp_path / "arch.json").write_text(json.dumps({"class_name": "Sequential", "config": layers}))
    theirs.save_weights(tmp_path / "weights.h5")
    ours = legacy.import_legacy(tmp_path / "arch.json", weights=tmp_path / "weights.h5")
    assert [layer.name for layer in ours.layers] == ["hidden", "drop", "out"]
    assert_computes_like_keras2(theirs, ours, tmp_path, tf_keras)


def test_sequential_as_a_dict_with_an_input_layer(tf_keras, tmp_path):
    """Keras 2.2.3+ and tf.keras: ``{name, layers}``, tf_keras 2.21 starting the layers with an InputLayer."""
    theirs = small_sequential(tf_keras, input_shape=(3,))
    config = json.loads(theirs.to_json())
    assert isinstance(config["config"], dict) and config["config"]["layers"][0]["class_name"] == "InputLayer"
    theirs.save(tmp_path / "theirs.h5")
    assert_computes_like_keras2(theirs, legacy.load_legacy_h5(tmp_path / "theirs.h5", compile=False), tmp_path,
                                tf_keras)


def test_sequential_built_later_keeps_its_shape_in_build_input_shape(tf_keras, tmp_path):
    """tf.keras 2.x: a Sequential given no input shape and built with ``build()`` had no InputLayer and no
    ``batch_input_shape``; its shape was ``build_input_shape`` beside the layers. tf_keras 2.21 now adds an
    InputLayer, so the file is forged from its own by taking that out."""
    theirs = small_sequential(tf_keras)
    theirs.build((None, 3))
    theirs.save(tmp_path / "theirs.h5")
    with h5py.File(tmp_path / "theirs.h5", "r+") as f:
        config = json.loads(f.attrs["model_config"])
        assert config["config"]["layers"][0]["class_name"] == "InputLayer"
        del config["config"]["layers"][0]
        config["config"]["build_input_shape"] = [None, 3]
        f.attrs["model_config"] = json.dumps(config).encode()
    ours = legacy.load_legacy_h5(tmp_path / "theirs.h5", compile=False)
    assert ours.input_shape == (None, 3)
    assert_computes_like_keras2(theirs, ours, tmp_path, tf_keras)
    broken = {**config, "config": {**config["config"], "build_input_shape": [[None, 3], [None, 3]]}}
    with pytest.raises(InputError, match=r"x\.json: Sequential build_input_shape \[\[None, 3\], \[None, 3\]\] is not "
                                         r"one shape"):
        legacy.model_from_json(json.dumps(broken), "x.json")


# --- Keras 2 numerics under Keras 3 names --------------------------------------------------------------

def test_hard_sigmoid_keeps_keras_2s_function(tf_keras):
    """Keras 2 (all releases, tf_keras too): clip(0.2 x + 0.5, 0, 1); Keras 3: relu6(x + 3) / 6."""
    x = np.linspace(-4, 4, 81, dtype="float32")
    keras2 = tf_keras.activations.hard_sigmoid(tf_keras.backend.constant(x)).numpy()
    np.testing.assert_allclose(keras2, np.clip(0.2 * x + 0.5, 0, 1), atol=1e-7)
    assert np.abs(keras.ops.convert_to_numpy(keras.activations.hard_sigmoid(x)) - keras2).max() > 0.05
    theirs = small_sequential(tf_keras, input_shape=(3,))
    ours = legacy.model_from_json(theirs.to_json())
    assert ours.get_layer("hidden").activation is legacy.numerics.keras2_hard_sigmoid
    np.testing.assert_allclose(keras.ops.convert_to_numpy(legacy.numerics.keras2_hard_sigmoid(x)), keras2, atol=1e-7)
    # written for Keras 2 under Keras 2's name again
    written = json.loads(legacy.model_to_json(ours))
    assert written["config"][0]["config"]["activation"] == "hard_sigmoid"
    assert "activation: hard_sigmoid" in legacy.model_to_yaml(ours)


def test_keras_3s_hard_sigmoid_cannot_be_written_for_keras_2():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.LSTM(2, recurrent_activation="hard_sigmoid", name="rnn")(
        keras.layers.Reshape((1, 3))(inputs)))
    with pytest.raises(InputError, match=re.escape("layer 'rnn' (LSTM): uses Keras 3's hard_sigmoid as "
                                                   "recurrent_activation, which Keras 2 cannot express")):
        legacy.keras2_model_config(model)


def test_locally_connected_layers_are_refused_by_name(tf_keras, tmp_path):
    """Keras 2.0 to tf_keras had LocallyConnected1D/2D; Keras 3 has no such layer."""
    theirs = tf_keras.Sequential([tf_keras.layers.LocallyConnected2D(2, 3, input_shape=(5, 5, 1), name="local")])
    theirs.save(tmp_path / "local.h5")
    with pytest.raises(InputError) as caught:
        legacy.load_legacy_h5(tmp_path / "local.h5")
    assert str(caught.value) == (f"{tmp_path / 'local.h5'}: layer 'local' is a Keras 2 LocallyConnected2D, which "
                                 "does not load: Keras 3 removed it")
