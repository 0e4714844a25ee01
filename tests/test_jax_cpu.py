"""The faster JAX/CPU formulations (jax_cpu.speed_up) change the speed only: same config, files, outputs, gradients."""

import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from conftest import BACKEND
from mnist_multibackend import data
from cpuinfo_samples import EPYC_AVX2, EPYC_AVX512, GRAVITON2, XEON_AMX
from mnist_multibackend.jax_cpu import (CONVS, ONEDNN_CONVS, WEIGHT_GRADIENT_SLICE, batch_norm_call, conv_forms,
                                        conv_with_sliced_weight_gradient, speed_up)
from mnist_multibackend.jax_onednn import available as onednn_available
from mnist_multibackend.model import build_model, compile_model
from mnist_multibackend.runtime import cpu_features
from mnist_multibackend.xla_cpu_flags import in_force

# The forms measured fastest on each CPU kind (docs/performance.md, "Choices per CPU"), with XLA's single
# convolutions on YNNPACK (XLA's default) and off it (xla_cpu_flags).
FORMS = {"avx512": conv_forms(cpu_features(EPYC_AVX512)), "avx2": conv_forms(cpu_features(EPYC_AVX2))}
FORMS_XLA_CONVOLUTIONS_FAST = {kind: conv_forms(cpu_features(sample), xla_convolutions_fast=True)
                               for kind, sample in (("avx512", EPYC_AVX512), ("avx2", EPYC_AVX2))}
# ... and where oneDNN loads (jax_onednn), whichever XLA setting is in force.
FORMS_ONEDNN = {(kind, fast): conv_forms(cpu_features(sample), xla_convolutions_fast=fast, onednn=True)
                for kind, sample in (("avx512", EPYC_AVX512), ("avx2", EPYC_AVX2)) for fast in (False, True)}
NONE = {"same_padded_convs": (), "matmul_convs": (), "sliced_weight_gradient_convs": (),
        "onednn_convs": ()}


def _rebound(model) -> list[str]:
    return [layer.name for layer in model.layers if {"call", "convolution_op"} & set(vars(layer))]


def _plain_twin(model) -> keras.Model:
    """The same model and weights with Keras's own computations (built from the config, not sped up)."""
    twin = keras.Model.from_config(model.get_config())
    twin.set_weights(model.get_weights())
    return twin


@pytest.fixture(scope="module")
def images(mnist):
    """64 real training digits, and their one-hot labels."""
    return data.as_model_input(mnist.x_train[:64]), data.one_hot(mnist.y_train[:64])


def _sped_up(**forms) -> keras.Model:
    model = build_model()
    speed_up(model, **forms)
    return model


def test_each_cpu_kind_gets_the_forms_measured_on_it():
    # Measured on both: the im2col matmul form beat conv1's SAME form on AVX2 and on AVX-512.
    assert FORMS["avx512"] == FORMS["avx2"] == {**NONE, "matmul_convs": CONVS}
    # With XLA's convolutions off YNNPACK's single-convolution path, XLA's own beat the matmul forms, and
    # their weight gradients summed over slices of the batch beat XLA's whole-batch ones.
    assert FORMS_XLA_CONVOLUTIONS_FAST["avx512"] == FORMS_XLA_CONVOLUTIONS_FAST["avx2"] == {
        **NONE, "sliced_weight_gradient_convs": ("conv1", "conv2", "conv3")}
    # oneDNN's convolutions beat the slices on AVX-512; on AVX2 its kernels doubled TensorFlow's step
    # over Eigen's, which XLA's convolutions are. An ARM CPU keeps XLA's.
    onednn_forms = {**NONE, "onednn_convs": ONEDNN_CONVS}
    assert FORMS_ONEDNN["avx512", False] == FORMS_ONEDNN["avx512", True] == FORMS_ONEDNN["avx2", True] == onednn_forms
    assert conv_forms(cpu_features(XEON_AMX), True, onednn=True) == onednn_forms
    assert conv_forms(cpu_features(GRAVITON2), True, onednn=True) == FORMS_XLA_CONVOLUTIONS_FAST["avx2"]
    assert conv_forms(cpu_features(GRAVITON2), False, onednn=True) == FORMS["avx2"]


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="the onednn-cpu-gomp wheel is a Linux x86-64 dependency only")
def test_onednn_loads_where_the_project_installs_it():
    assert onednn_available()


@pytest.mark.jax
def test_applied_on_jax_cpu_to_the_measured_layers_only():
    chosen = conv_forms(cpu_features(), in_force(), onednn_available())
    rebound = sum(chosen.values(), ())
    # Each batch norm with the ReLU layer after it: the activation layers pass on what the batch norms rectified.
    expected = [name for name in ("conv0", "bn0", "activation_1", "conv1", "bn1", "activation_2", "MP1", "conv2",
                                  "bn2", "activation_3", "conv3", "bn3", "activation_4", "MP2")
                if name[:2] in ("MP", "bn", "ac") or name in rebound]
    assert speed_up(build_model()) == expected
    assert speed_up(build_model(), batch_norm_relu=False) == [name for name in expected if name[:2] != "ac"]
    assert speed_up(build_model(), **{**NONE, "same_padded_convs": ("conv1",)}, batch_norm=False) == [
        "conv1", "MP1", "MP2"]


def test_models_for_inference_keep_kerass_own_computations():
    """conv1's SAME form made JAX/CPU prediction 4x slower at batch 512: only train() applies the forms."""
    assert _rebound(build_model()) == []


@pytest.mark.tensorflow
def test_not_applied_on_tensorflow():
    model = build_model()
    assert speed_up(model) == [] and _rebound(model) == []


def test_config_and_saved_file_are_the_original(tmp_path):
    model = compile_model(_sped_up())
    assert model.get_config() == _plain_twin(model).get_config()
    path = tmp_path / "model.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        layers = {layer["name"]: layer for layer in json.loads(archive.read("config.json"))["config"]["layers"]}
    assert layers["conv1"]["class_name"] == "Conv2D" and layers["conv1"]["config"]["padding"] == "valid"
    assert layers["MP1"]["class_name"] == "MaxPooling2D"
    # A fresh process with plain Keras reads it back as the original layers.
    script = ("import sys, keras; m = keras.saving.load_model(sys.argv[1]); "
              "print(type(m.get_layer('conv1')).__name__, m.get_layer('conv1').padding, type(m.get_layer('MP1')).__name__)")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KERAS_BACKEND": BACKEND})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["Conv2D", "valid", "MaxPooling2D"]


# Every form speed_up offers: the ones chosen on the CPUs measured (oneDNN's convolutions on x86 with AVX2;
# XLA's convolutions with the pools' mask gradient, where XLA:CPU's setting is in force; the matmul forms
# elsewhere), and conv1's SAME form (studied,
# and what AVX-512 hosts ran until the matmul form was measured there).
OFFERED_FORMS = {"chosen": FORMS["avx2"], "chosen, XLA convolutions fast": FORMS_XLA_CONVOLUTIONS_FAST["avx2"],
                 "chosen, oneDNN": FORMS_ONEDNN["avx2", True],
                 "conv1 SAME + crop": {**NONE, "same_padded_convs": ("conv1",)}}


@pytest.mark.jax
@pytest.mark.parametrize("form", sorted(OFFERED_FORMS))
def test_outputs_and_gradients_equal_the_plain_model(images, form):
    import jax

    x, y = images
    model = _sped_up(**OFFERED_FORMS[form])
    twin = _plain_twin(model)
    # One state for both: the same weights, batch statistics and dropout seed.
    numpy = keras.ops.convert_to_numpy  # np.array(variable) would go through Keras's __array__, deprecated by NumPy 2
    state = ([numpy(v) for v in model.trainable_variables], [numpy(v) for v in model.non_trainable_variables])

    def loss(trainable, network):
        probabilities, _ = network.stateless_call(trainable, state[1], x, training=True)
        return keras.losses.categorical_crossentropy(y, probabilities).mean()

    np.testing.assert_allclose(model.predict(x, verbose=0), twin.predict(x, verbose=0), atol=1e-5, rtol=0)
    # The batch norms' moving statistics after a training step, as Keras's own layers update them.
    for fast_value, plain_value in zip(model.stateless_call(*state, x, training=True)[1],
                                       twin.stateless_call(*state, x, training=True)[1], strict=True):
        np.testing.assert_allclose(np.asarray(fast_value), np.asarray(plain_value), atol=1e-6, rtol=1e-5)
    fast, plain = jax.grad(loss)(state[0], model), jax.grad(loss)(state[0], twin)
    for variable, a, b in zip(model.trainable_variables, fast, plain, strict=True):
        # Float32 sums in another order: conv1's kernel gradient sums 43,264 products per element, and
        # against a float64 computation XLA's own form was off by 6e-5 of its largest element and the
        # matmul form by 5e-6 (AVX-512 host); so the tolerance follows the gradient's scale.
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-5 + 1e-4 * np.abs(b).max(), rtol=1e-5, err_msg=variable.path)


@pytest.mark.jax
@pytest.mark.parametrize("batch, slice_size", [(WEIGHT_GRADIENT_SLICE - 5, WEIGHT_GRADIENT_SLICE),
                                               (2 * WEIGHT_GRADIENT_SLICE + 7, WEIGHT_GRADIENT_SLICE), (45, 8)])
def test_sliced_weight_gradient_is_the_whole_batchs(batch, slice_size):
    """One slice, and several with a shorter last one (the last batch of an epoch): the same gradients."""
    import functools

    import jax

    rng = np.random.default_rng(batch)
    x = rng.normal(size=(batch, 12, 12, 32)).astype("float32")
    kernel = rng.normal(size=(3, 3, 32, 64)).astype("float32") / 17
    upstream = rng.normal(size=(batch, 10, 10, 64)).astype("float32")

    def keras_conv(x, kernel):
        return keras.ops.conv(x, kernel, strides=1, padding="valid", data_format="channels_last")

    sliced = functools.partial(conv_with_sliced_weight_gradient, slice_size=slice_size)
    outputs, sliced_vjp = jax.vjp(sliced, x, kernel)
    expected_outputs, keras_vjp = jax.vjp(keras_conv, x, kernel)
    np.testing.assert_array_equal(np.asarray(outputs), np.asarray(expected_outputs))
    (dx, dk), (expected_dx, expected_dk) = sliced_vjp(upstream), keras_vjp(upstream)
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(expected_dx))
    # Sums of batch * 100 products per element, in another order.
    np.testing.assert_allclose(np.asarray(dk), np.asarray(expected_dk), rtol=1e-5, atol=1e-4)
    assert not np.array_equal(np.asarray(dk), np.zeros_like(dk))


@pytest.mark.jax
def test_max_pool_gradient_goes_to_the_first_maximum_as_keras_does():
    import jax

    # Many ties: values on a coarse grid, whole windows of zeros, of ones, and one repeated maximum per window.
    rng = np.random.default_rng(0)
    x = np.round(rng.uniform(0, 3, (4, 8, 8, 3))).astype(np.float32)
    x[:, :2, :2] = 0.0
    x[:, 2:4, :2] = 1.0
    grad = rng.normal(size=(4, 4, 4, 3)).astype(np.float32)
    model = _sped_up()
    fast_pool = model.get_layer("MP1").call

    def keras_pool(x):
        return keras.ops.max_pool(x, (2, 2), strides=(2, 2), padding="valid")

    fast_y, fast_vjp = jax.vjp(fast_pool, x)
    plain_y, plain_vjp = jax.vjp(keras_pool, x)
    np.testing.assert_array_equal(fast_y, plain_y)
    np.testing.assert_array_equal(fast_vjp(grad)[0], plain_vjp(grad)[0])


def _batch_norm_twins(**options):
    """A BatchNormalization with random weights and statistics, and a copy whose training computation is
    ``jax_cpu.batch_norm_call``'s."""
    rng = np.random.default_rng(1)
    layers = []
    for _ in range(2):
        layer = keras.layers.BatchNormalization(momentum=0.9, **options)
        layer.build((6, 5, 5, 4) if options.get("axis", -1) == -1 else (6, 4, 5, 5))
        layers.append(layer)
    weights = [rng.normal(1.0, 0.5, w.shape) for w in layers[0].get_weights()]
    weights[3] = np.abs(weights[3])  # a variance
    for layer in layers:
        layer.set_weights(weights)
    layers[1].call = batch_norm_call(layers[1])
    return layers


@pytest.mark.jax
def test_batch_norm_gradient_written_out_is_kerass():
    """Against Keras's own layer: the outputs, the moving statistics and every gradient, the input's included,
    for a loss that weighs the outputs unevenly per channel and position. Float32 sums in another order: the
    tolerance is float32's (in float64 the two agreed to 1e-15; a wrong term would be off by the gradient's
    own scale)."""
    import jax

    plain, fast = _batch_norm_twins()
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, (6, 5, 5, 4)).astype(np.float32)
    weights = rng.normal(size=x.shape).astype(np.float32)

    def run(layer, trainable, x):
        outputs, statistics = layer.stateless_call(trainable, [v.value for v in layer.non_trainable_variables], x,
                                                   training=True)
        return (outputs * weights).sum() + (outputs ** 2).sum(), (outputs, statistics)

    trainable = [v.value for v in plain.trainable_variables]
    (plain_grads, (plain_out, plain_stats)), (fast_grads, (fast_out, fast_stats)) = (
        jax.grad(run, argnums=(1, 2), has_aux=True)(layer, trainable, x) for layer in (plain, fast))
    np.testing.assert_allclose(fast_out, plain_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast_stats, plain_stats, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(fast_grads), jax.tree_util.tree_leaves(plain_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


@pytest.mark.jax
@pytest.mark.parametrize("case", ["inference", "frozen", "channels first"])
def test_batch_norm_left_to_keras_where_the_form_does_not_apply(case):
    plain, fast = _batch_norm_twins(**({"axis": 1} if case == "channels first" else {}))
    x = np.random.default_rng(3).normal(size=(6, 4, 5, 5) if case == "channels first" else (6, 5, 5, 4))
    x = x.astype(np.float32)
    if case == "frozen":
        plain.trainable = fast.trainable = False
    training = case != "inference"
    np.testing.assert_array_equal(fast(x, training=training), plain(x, training=training))
    for a, b in zip(fast.non_trainable_variables, plain.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))


@pytest.mark.jax
@pytest.mark.parametrize("options", [{"center": False}, {"scale": False}, {"renorm": True}])
def test_speed_up_leaves_other_batch_norms_alone(options):
    inputs = keras.Input((5, 5, 4))
    model = keras.Model(inputs, keras.layers.BatchNormalization(**options)(inputs))
    assert speed_up(model) == []


def _loss_and_grads(model, trainable, non_trainable, x, weights):
    """A loss that weighs the outputs unevenly, its aux (outputs, new non-trainable state), its gradients
    with respect to the trainable weights and the input."""
    import jax

    def loss(trainable, x):
        outputs, state = model.stateless_call(trainable, non_trainable, x, training=True)
        total = sum((o * w).sum() + (o ** 2).sum()
                    for o, w in zip(keras.tree.flatten(outputs), keras.tree.flatten(weights), strict=True))
        return total, (outputs, state)

    return jax.grad(loss, argnums=(0, 1), has_aux=True)(trainable, x)


def _relu_pair_cases():
    """Models in which a batch norm is followed by a ReLU, or by something else; each with whether speed_up
    may compute the two as one (only where the ReLU alone takes the batch norm's output, once)."""
    def model(after, also=None):
        inputs = keras.Input((5, 5, 4))
        normed = keras.layers.BatchNormalization(name="bn")(inputs)
        outputs = after(normed)
        if also == "added":  # another layer takes the batch norm's output too
            outputs = keras.layers.Add()([outputs, normed])
        elif also == "returned":  # the model returns it as well
            outputs = [outputs, normed]
        elif also == "called twice":  # the ReLU layer serves another input too
            outputs = keras.layers.Add()([outputs, after(inputs)])
        return keras.Model(inputs, outputs)

    return {"Activation relu": (lambda: model(keras.layers.Activation("relu")), True),
            "ReLU layer": (lambda: model(keras.layers.ReLU()), True),
            "ReLU capped at 6": (lambda: model(keras.layers.ReLU(max_value=6.0)), False),
            "leaky ReLU": (lambda: model(keras.layers.ReLU(negative_slope=0.1)), False),
            "tanh": (lambda: model(keras.layers.Activation("tanh")), False),
            "another taker": (lambda: model(keras.layers.Activation("relu"), "added"), False),
            "output returned": (lambda: model(keras.layers.Activation("relu"), "returned"), False),
            "ReLU called twice": (lambda: model(keras.layers.Activation("relu"), "called twice"), False)}


@pytest.mark.jax
@pytest.mark.parametrize("case", sorted(_relu_pair_cases()))
def test_batch_norm_and_relu_as_one_only_where_the_relu_alone_follows(case):
    """Where the pair is computed as one, and where it is not: the outputs, moving statistics and every
    gradient (the input's included) are Keras's own, including the ReLU's at exactly zero."""
    import jax

    build, paired = _relu_pair_cases()[case]
    plain = build()
    fast = keras.Model.from_config(plain.get_config())
    rng = np.random.default_rng(4)
    weights = [rng.normal(0.0, 0.5, w.shape) for w in plain.get_weights()]
    weights[3] = np.abs(weights[3]) + 0.1  # a variance
    for model in (plain, fast):
        model.set_weights(weights)
    relu = [layer.name for layer in fast.layers if isinstance(layer, (keras.layers.Activation, keras.layers.ReLU))]
    assert speed_up(fast) == (["bn", *relu] if paired else ["bn"])
    x = rng.normal(0.0, 1.0, (6, 5, 5, 4)).astype(np.float32)
    x[..., 0] = 1.5  # one channel constant: with its beta zeroed below, every output there is exactly zero
    trainable = [v.value for v in plain.trainable_variables]
    trainable[1] = trainable[1].at[0].set(0.0)  # [gamma, beta]
    non_trainable = [v.value for v in plain.non_trainable_variables]
    outputs = plain.stateless_call(trainable, non_trainable, x, training=True)[0]
    loss_weights = [rng.normal(size=o.shape).astype(np.float32) for o in keras.tree.flatten(outputs)]
    (fast_grads, (fast_out, fast_state)), (plain_grads, (plain_out, plain_state)) = (
        _loss_and_grads(model, trainable, non_trainable, x, loss_weights) for model in (fast, plain))
    for a, b in zip(keras.tree.flatten(fast_out) + list(fast_state), keras.tree.flatten(plain_out) + list(plain_state),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(fast_grads), jax.tree_util.tree_leaves(plain_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    if paired:  # the ReLU's gradient is zero at zero, as jax.nn.relu's: nothing reaches the constant channel
        assert not np.any(np.asarray(fast_grads[1])[..., 0]) and np.any(np.asarray(fast_grads[1])[..., 1:])
    # Inference: Keras's batch norm, then the ReLU where the pair is one, as the plain model.
    for a, b in zip(keras.tree.flatten(fast.predict(x, verbose=0)), keras.tree.flatten(plain.predict(x, verbose=0)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
