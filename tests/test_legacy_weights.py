"""The weight dialects of Keras 2 files: each built here by ``tf_keras`` (real Keras 2), forged with h5py where
``tf_keras`` no longer writes that dialect, loaded here and run against ``tf_keras``'s own outputs.

Every loaded model also goes through a ``.keras`` file and ``loading.load_saved_model`` with the same outputs.
"""

import json

import h5py
import keras
import numpy as np
import pytest

from conftest import import_tf_keras
from mnist_multibackend import legacy
from mnist_multibackend.errors import InputError
from mnist_multibackend.legacy import weights
from mnist_multibackend.loading import load_saved_model

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def tf_keras():
    return import_tf_keras()


def inputs(*shape) -> np.ndarray:
    return RNG.normal(size=(3, *shape)).astype(np.float32)


def assert_outputs(model, x, expected, tmp_path) -> None:
    """``model`` gives ``expected`` on ``x``, and so does its copy saved to ``.keras`` and loaded again."""
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)
    model.save(tmp_path / "copy.keras")
    np.testing.assert_allclose(load_saved_model(tmp_path / "copy.keras", compile=False).predict(x, verbose=0),
                               expected, atol=1e-5)


def edit_config(path, edit) -> None:
    """Rewrite the ``model_config`` of a full-model file with ``edit(config)``."""
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config).encode("utf8")


def layer_configs(config) -> list:
    return config["config"]["layers"]


def load_both_ways(tmp_path, model, kind: str):
    """``model`` (tf_keras) saved as a full-model file, or as a weights file that goes with its architecture."""
    path = tmp_path / f"{kind}.h5"
    if kind == "full model":
        model.save(path)
        return path, lambda: legacy.load_legacy_h5(path, compile=False)
    model.save_weights(path)
    architecture = json.loads(model.to_json())
    return path, lambda: legacy.load_weights_h5(legacy.model_from_keras2_config(architecture), path)


def weight_groups(f: h5py.File) -> h5py.Group:
    return f["model_weights"] if "model_weights" in f else f


def names(group: h5py.Group, attribute: str) -> list:
    """A name-list attribute as tf_keras wrote it (variable-length strings, or bytes)."""
    return [n.decode() if isinstance(n, bytes) else n for n in group.attrs[attribute]]


# --- 1. weight groups named after another model ------------------------------------------------------

def rename_inner(path, layer: str, inner: str) -> None:
    """Move the datasets of ``layer`` from ``layer/layer/...`` to ``layer/inner/...`` and name them so."""
    with h5py.File(path, "r+") as f:
        group = weight_groups(f)[layer]
        saved = names(group, "weight_names")
        renamed = [inner + n[n.index("/"):] for n in saved]
        for old, new in zip(saved, renamed):
            group.move(old, new)
        group.attrs["weight_names"] = np.array([n.encode() for n in renamed])


@pytest.mark.parametrize("kind", ["full model", "weights only"])
def test_weights_whose_inner_names_are_another_layers_load_by_position(tf_keras, tmp_path, kind):
    """Keras 2 (all releases) named a layer's weights after the layer that created them, so a model renamed or
    rebuilt after saving holds ``lstm_5/lstm_5_2/kernel:0``; Keras 2 matched them by position."""
    model = tf_keras.Sequential([tf_keras.Input((5, 3)),
                                 tf_keras.layers.LSTM(4, recurrent_activation="sigmoid", return_sequences=True,
                                                      name="lstm_5"),
                                 tf_keras.layers.Flatten(name="flatten"), tf_keras.layers.Dense(2, name="dense_1")])
    x = inputs(5, 3)
    path, load = load_both_ways(tmp_path, model, kind)
    rename_inner(path, "lstm_5", "lstm_5_2")
    rename_inner(path, "dense_1", "dense_1_1")
    with h5py.File(path, "r") as f:
        assert "kernel:0" in weight_groups(f)["dense_1/dense_1_1"]
    assert_outputs(load(), x, model.predict(x, verbose=0), tmp_path)


# --- 2. a Sequential saved without an input shape ----------------------------------------------------

def drop_input_shape(config) -> None:
    """Keras 2.2.0-2.2.2's Sequential built lazily by ``fit``: a bare list of layers, no input shape anywhere."""
    layers = [layer for layer in layer_configs(config) if layer["class_name"] != "InputLayer"]
    for layer in layers:
        layer["config"].pop("batch_input_shape", None)
    config["config"] = layers


LAZY_MODELS = {
    "dense": (lambda L: [L.Dense(6, activation="relu", name="d0"), L.Dropout(0.5, name="dropout"),
                         L.BatchNormalization(name="bn"), L.Dense(2, name="d1")], (784,)),
    "conv": (lambda L: [L.Conv2D(3, 3, name="c"), L.GlobalMaxPooling2D(name="g"), L.Dense(2, name="d")], (7, 7, 2)),
    "embedding": (lambda L: [L.Embedding(10, 4, name="e"),
                             L.LSTM(3, recurrent_activation="sigmoid", name="r")], (5,)),
}


@pytest.mark.parametrize("case", LAZY_MODELS)
def test_a_sequential_without_input_shape_is_built_from_its_weights(tf_keras, tmp_path, case):
    """Keras 2.2.0-2.2.2 wrote a Sequential that ``fit`` built with no input shape in its config; Keras 2
    built it from the data. Here the first kernel says it: (784, 6) -> (None, 784); a Conv2D's kernel only
    the channels -> (None, None, None, 2); an Embedding -> (None, None)."""
    layers, shape = LAZY_MODELS[case]
    model = tf_keras.Sequential([tf_keras.Input(shape), *layers(tf_keras.layers)])
    x = inputs(*shape) if case != "embedding" else RNG.integers(0, 10, size=(3, *shape))
    model.save(tmp_path / "lazy.h5")
    edit_config(tmp_path / "lazy.h5", drop_input_shape)
    assert_outputs(legacy.load_legacy_h5(tmp_path / "lazy.h5", compile=False), x, model.predict(x, verbose=0),
                   tmp_path)


def test_an_input_shape_the_weights_cannot_tell_is_one_clear_error(tf_keras, tmp_path):
    """A Conv2D then Flatten then Dense (Keras 2.2.0, built lazily): the kernel gives the channels, not the
    image size that Flatten needs."""
    L = tf_keras.layers
    model = tf_keras.Sequential([tf_keras.Input((6, 6, 1)), L.Conv2D(2, 3), L.Flatten(), L.Dense(2)])
    model.save(tmp_path / "lazy.h5")
    edit_config(tmp_path / "lazy.h5", drop_input_shape)
    with pytest.raises(InputError, match=r"building it for \(None, None, None, 1\).*batch_input_shape") as err:
        legacy.load_legacy_h5(tmp_path / "lazy.h5", compile=False)
    assert "\n" not in str(err.value)


# --- 3. weights saved by Theano ------------------------------------------------------------------------

def as_saved_by_theano(path) -> None:
    """What Keras 2 on Theano wrote: the same layout with every convolution kernel's spatial axes reversed
    (ConvLSTM2D's recurrent kernel too), and ``backend: theano``."""
    with h5py.File(path, "r+") as f:
        f.attrs["backend"] = b"theano"
        group = weight_groups(f)
        group.attrs["backend"] = b"theano"
        for layer in names(group, "layer_names"):
            for name in names(group[layer], "weight_names"):
                if "conv" in name and "kernel" in name:
                    kernel = group[layer][name]
                    kernel[...] = np.asarray(kernel)[(slice(None, None, -1),) * (kernel.ndim - 2)]


@pytest.mark.parametrize("kind", ["full model", "weights only"])
def test_convolution_kernels_saved_by_theano_are_flipped_as_keras_2_did(tf_keras, tmp_path, kind):
    """Keras 2.0-2.1 on Theano (channels_last model): kernels in Theano's convolution convention, which
    Keras 2.1's ``preprocess_weights_for_loading`` flipped with ``convert_kernel`` on any other backend."""
    L = tf_keras.layers
    model = tf_keras.Sequential([
        tf_keras.Input((3, 6, 6, 1)),
        L.ConvLSTM2D(2, 3, recurrent_activation="sigmoid", padding="same", name="conv_lstm"),
        L.Conv2D(3, (3, 2), name="conv2d"), L.Flatten(name="flatten"), L.Dense(2, name="dense")])
    x = inputs(3, 6, 6, 1)
    path, load = load_both_ways(tmp_path, model, kind)
    as_saved_by_theano(path)
    with h5py.File(path, "r") as f:  # the forged kernels differ from tf_keras's
        assert not np.allclose(weight_groups(f)["conv2d/conv2d/kernel:0"], model.get_layer("conv2d").kernel)
    assert_outputs(load(), x, model.predict(x, verbose=0), tmp_path)


def test_a_channels_first_theano_model_keeps_its_layout(tf_keras, tmp_path):
    """Keras 2.0-2.1 on Theano, whose default image_data_format was channels_first: the model loads as it was
    (input (N, C, H, W)) with its kernels flipped, and runs on both backends (on TensorFlow through XLA, whose
    CPU code takes NCHW). TensorFlow's own CPU kernels take NHWC only (tf_keras cannot run the model on the
    CPU), so the reference is tf_keras's channels_last twin of the model, its Dense rows permuted by tf_keras's
    own ``convert_dense_weights_data_format``, run on NHWC inputs. Compiled as a Keras 2 full load compiles
    it, it trains too."""
    from tf_keras.src.utils.layer_utils import convert_dense_weights_data_format  # Keras 2's, not exported
    L = tf_keras.layers

    def build(data_format, shape):
        return tf_keras.Sequential([
            tf_keras.Input(shape), L.Conv2D(3, (3, 2), data_format=data_format, name="conv2d"),
            L.BatchNormalization(axis=1 if data_format == "channels_first" else -1, name="batch_normalization"),
            L.MaxPooling2D(data_format=data_format, name="max_pooling2d"), L.Flatten(name="flatten"),
            L.Dense(2, name="dense")])

    theirs = build("channels_first", (1, 8, 8))
    theirs.set_weights([RNG.uniform(0.5, 1.5, size=w.shape) for w in theirs.get_weights()])
    theirs.save(tmp_path / "theano.h5")
    as_saved_by_theano(tmp_path / "theano.h5")
    twin = build("channels_last", (8, 8, 1))
    twin.set_weights(theirs.get_weights())
    convert_dense_weights_data_format(twin.get_layer("dense"), twin.get_layer("max_pooling2d").output_shape[1:],
                                      target_data_format="channels_last")
    x = inputs(1, 8, 8)
    expected = twin.predict(x.transpose(0, 2, 3, 1), verbose=0)
    ours = legacy.load_legacy_h5(tmp_path / "theano.h5", compile=False)
    assert ours.input_shape == (None, 1, 8, 8)
    assert_outputs(ours, x, expected, tmp_path)
    ours.compile(optimizer="sgd", loss="mse", jit_compile=ours.jit_compile)
    assert np.isfinite(ours.train_on_batch(x, expected))


# --- 4. CuDNNLSTM and CuDNNGRU --------------------------------------------------------------------------

def cudnn_layers():
    """tf_keras's CuDNNLSTM and CuDNNGRU, which it exports only in its TF1 API (``tf_keras.api._v1``)."""
    from tf_keras.src.layers.rnn.cudnn_gru import CuDNNGRU
    from tf_keras.src.layers.rnn.cudnn_lstm import CuDNNLSTM
    return CuDNNLSTM, CuDNNGRU


@pytest.mark.parametrize("kind", ["full model", "weights only"])
def test_cudnn_layers_load_as_lstm_and_gru_with_the_same_outputs(tf_keras, tmp_path, kind):
    """Keras 2.0.9-2.3 and tf.keras 1.x wrote CuDNNLSTM/CuDNNGRU (GPU only; built and saved here on the CPU by
    tf_keras). The reference is tf_keras's LSTM/GRU(reset_after=True) with sigmoid gates loading that file
    (it converts cuDNN weights on load), run on the CPU."""
    CuDNNLSTM, CuDNNGRU = cudnn_layers()
    L = tf_keras.layers

    def build(lstm, gru):
        return tf_keras.Sequential([tf_keras.Input((5, 3)), lstm(4, return_sequences=True, name="lstm"),
                                    L.Bidirectional(gru(2), name="bidirectional"), L.Dense(2, name="dense")])

    cudnn = build(CuDNNLSTM, CuDNNGRU)
    for layer in cudnn.layers[:2]:  # random biases, so that both of cuDNN's sets count
        layer.set_weights([RNG.normal(size=w.shape) for w in layer.get_weights()])
    path, load = load_both_ways(tmp_path, cudnn, kind)
    reference = build(lambda units, **kw: L.LSTM(units, recurrent_activation="sigmoid", **kw),
                      lambda units, **kw: L.GRU(units, recurrent_activation="sigmoid", reset_after=True, **kw))
    reference.load_weights(path)
    x = inputs(5, 3)
    ours = load()
    assert [type(layer).__name__ for layer in ours.layers] == ["LSTM", "Bidirectional", "Dense"]
    assert_outputs(ours, x, reference.predict(x, verbose=0), tmp_path)


# --- 5. GRU from before reset_after ---------------------------------------------------------------------

def drop_reset_after(config) -> None:
    """Keras 2.0-2.1.4's GRU config: no ``reset_after`` (the reset gate applied before the recurrent kernel)."""
    for layer in layer_configs(config):
        inner = layer["config"].get("layer", layer)
        if inner["class_name"] == "GRU":
            del inner["config"]["reset_after"]


def test_gru_from_before_reset_after_loads_with_keras_2_numerics(tf_keras, tmp_path):
    """Keras <= 2.1.4: GRU configs without ``reset_after`` and a bias of shape (3 * units,); alone and inside
    Bidirectional. Keras 3 defaults to reset_after=True, a different function with a (2, 3 * units) bias."""
    L = tf_keras.layers
    model = tf_keras.Sequential([
        tf_keras.Input((5, 3)),
        L.GRU(4, recurrent_activation="sigmoid", reset_after=False, return_sequences=True, name="gru"),
        L.Bidirectional(L.GRU(2, recurrent_activation="sigmoid", reset_after=False), name="bidirectional")])
    model.save(tmp_path / "gru.h5")
    edit_config(tmp_path / "gru.h5", drop_reset_after)
    with h5py.File(tmp_path / "gru.h5", "r") as f:
        assert "reset_after" not in f.attrs["model_config"]
    ours = legacy.load_legacy_h5(tmp_path / "gru.h5", compile=False)
    assert ours.get_layer("gru").reset_after is False
    x = inputs(5, 3)
    assert_outputs(ours, x, model.predict(x, verbose=0), tmp_path)


# --- 6. hostile files ------------------------------------------------------------------------------------

def bias_of_nine_units(group) -> None:
    del group["lstm/lstm/bias:0"]
    group["lstm/lstm"].create_dataset("bias:0", data=np.zeros(9 * 4, np.float32))


def text_kernel(group) -> None:
    del group["lstm/lstm/kernel:0"]
    group["lstm/lstm"].create_dataset("kernel:0", data=np.array([b"x"] * 3))


def huge_backend(group) -> None:
    group.attrs["backend"] = b"theano" * 100


@pytest.mark.parametrize("damage, fragment", [
    (bias_of_nine_units, r"lstm/lstm/bias:0 has shape \(36,\)"),
    (text_kernel, "numbers only"),
    (huge_backend, "'backend' is 600 characters"),
], ids=["cudnn-like bias of the wrong size", "text for a kernel", "oversized backend attribute"])
def test_arrays_that_fit_no_dialect_are_one_clear_error(tf_keras, tmp_path, damage, fragment):
    """A Keras 2 file (tf_keras, CuDNNLSTM) damaged so that no dialect fits: refused before any array is read."""
    CuDNNLSTM, _ = cudnn_layers()
    model = tf_keras.Sequential([tf_keras.Input((5, 3)), CuDNNLSTM(4, name="lstm")])
    model.save(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "bad.h5", "r+") as f:
        damage(f["model_weights"])
    with pytest.raises(InputError, match=fragment) as err:
        legacy.load_legacy_h5(tmp_path / "bad.h5", compile=False)
    assert "\n" not in str(err.value)


def test_convert_kernel_is_keras_2s():
    """Keras 2's conv_utils.convert_kernel reversed every axis but the last two (input, output channels)."""
    kernel = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(weights.convert_kernel(kernel), kernel[::-1, ::-1, :, :])
    np.testing.assert_array_equal(weights.convert_kernel(weights.convert_kernel(kernel)), kernel)
    assert keras.ops.convert_to_numpy(keras.ops.convert_to_tensor(weights.convert_kernel(kernel))).shape == kernel.shape
