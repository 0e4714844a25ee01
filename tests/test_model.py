"""The model definition reproduces the 2017 architecture on every backend."""

import inspect

import keras
import numpy as np
import pytest

from mnist_multibackend import model as model_module
from mnist_multibackend.model import build_model, compile_model

ORIGINAL_LAYERS = ["input_1", "conv0", "bn0", "activation_1", "conv1", "bn1", "activation_2", "MP1", "conv2",
                   "bn2", "activation_3", "conv3", "bn3", "activation_4", "MP2", "dropout_1", "flatten_1",
                   "fc1", "dropout_2", "fco"]


def test_layers_and_parameter_counts_match_the_original():
    model = build_model()
    assert [layer.name for layer in model.layers] == ORIGINAL_LAYERS
    assert model.count_params() == 330_730
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 330_346
    assert model.output_shape == (None, 10)


def test_layer_settings_match_the_original():
    model = build_model()
    for i, filters in enumerate([32, 32, 64, 64]):
        conv = model.get_layer(f"conv{i}").get_config()
        assert (conv["filters"], tuple(conv["kernel_size"]), conv["padding"]) == (filters, (3, 3), "valid")
        bn = model.get_layer(f"bn{i}").get_config()
        assert (bn["momentum"], bn["epsilon"]) == (0.99, 1e-3)
        assert model.get_layer(f"activation_{i + 1}").get_config()["activation"] == "relu"
    assert model.get_layer("dropout_1").rate == 0.2 and model.get_layer("dropout_2").rate == 0.4
    assert model.get_layer("fc1").units == 256 and model.get_layer("fco").get_config()["activation"] == "softmax"
    assert model.get_layer("MP2").output.shape == (None, 4, 4, 64)


def test_the_model_has_no_backend_specific_code():
    source = inspect.getsource(model_module)
    for backend_module in ("tensorflow", "jax", "torch"):
        assert f"import {backend_module}" not in source and f"from {backend_module}" not in source


def test_config_round_trips():
    model = build_model()
    clone = keras.Model.from_config(model.get_config())
    assert [layer.name for layer in clone.layers] == ORIGINAL_LAYERS
    assert clone.count_params() == model.count_params()


def test_compiled_with_the_original_recipe():
    model = compile_model(build_model())
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert float(optimizer.learning_rate) == pytest.approx(1e-3) and optimizer.epsilon == 1e-8
    probabilities = model.predict(np.zeros((2, 28, 28, 1), np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
