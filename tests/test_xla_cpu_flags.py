"""XLA:CPU's convolution setting for JAX runs (xla_cpu_flags.py): the policy, the parsing, and its effect in a real process."""

import json
import os
import subprocess
import sys

import pytest

from mnist_multibackend import xla_cpu_flags
from mnist_multibackend.xla_cpu_flags import FLAG, SETTING


@pytest.mark.parametrize("environ, knows, running, expected", [
    ({}, True, False, "set"),
    ({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}, True, False, "set"),
    ({}, False, False, "unknown to this XLA"),
    ({}, True, True, "JAX already running"),
    ({"XLA_FLAGS": f"{FLAG}=+LIBRARY_FUSION_TYPE_ELTWISE"}, True, False, "user's setting"),
    ({"XLA_FLAGS": f"{FLAG}=individual_dot"}, False, True, "user's setting"),
    # XLA reads a value that does not start with "-" as the name of a file of flags: appending would
    # make it look for a file named "flags.txt --xla_cpu_...", and every JAX command would die.
    ({"XLA_FLAGS": "/home/me/flags.txt"}, True, False, "a file of flags (XLA_FLAGS names one)"),
    ({"XLA_FLAGS": "--xla_dump_to='/tmp/a b"}, True, False, "user's flags, unbalanced quotes"),
    ({"XLA_FLAGS": "   "}, True, False, "set"),
])
def test_policy_adds_the_flag_only_where_xla_knows_it_and_the_user_has_not_chosen(environ, knows, running, expected):
    assert xla_cpu_flags.policy(environ, knows, running) == expected


@pytest.mark.parametrize("xla_flags, expected", [
    ("", False),
    (SETTING, True),
    (f"--xla_cpu_enable_fast_math=false {SETTING}", True),
    (f"{FLAG}=-individual_convolution", True),
    (f"{FLAG}=+LIBRARY_FUSION_TYPE_ELTWISE", False),
    (f"{FLAG}=+LIBRARY_FUSION_TYPE_ELTWISE,-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", True),
    (f"{FLAG}=individual_dot", True),  # the whole set, without single convolutions
    (f"{FLAG}=individual_dot,individual_convolution", False),
    (f"{SETTING} {FLAG}=+LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", False),  # XLA reads the last one
    ("--xla_dump_to='/tmp/unbalanced", False),
])
def test_in_force_reads_the_setting_xla_reads(xla_flags, expected):
    assert xla_cpu_flags.in_force(xla_flags) is expected


def test_a_made_up_setting_is_not_found_in_jaxlib(monkeypatch):
    monkeypatch.setattr(xla_cpu_flags, "VALUE", "-LIBRARY_FUSION_TYPE_NO_SUCH_TYPE_ANYWHERE")
    assert xla_cpu_flags.xla_knows_setting() is False


@pytest.mark.skipif(not xla_cpu_flags.xla_knows_setting(), reason="this jaxlib's XLA does not know the setting")
def test_a_gpu_plugin_whose_xla_lacks_the_setting_keeps_it_off(monkeypatch, tmp_path):
    # Its XLA parses XLA_FLAGS too, and would abort on a flag it does not know.
    plugin = tmp_path / "jax_cuda12_plugin"
    plugin.mkdir()
    (plugin / "xla_cuda_plugin.so").write_bytes(b"\x7fELF" + FLAG[2:].encode() + b" other names only")
    found = xla_cpu_flags._package_dir
    monkeypatch.setattr(xla_cpu_flags, "_package_dir", lambda name: plugin if name == "jax_cuda12_plugin" else found(name))
    assert xla_cpu_flags.xla_knows_setting() is False
    (plugin / "xla_cuda_plugin.so").write_bytes(b"\x7fELF" + FLAG[2:].encode() + b" " + xla_cpu_flags.VALUE[1:].encode())
    assert xla_cpu_flags.xla_knows_setting() is True


# A child starts JAX as every run does (runtime.start), then compiles conv1 of the model on its own and reports
# whether XLA handed it to YNNPACK as a one-operation fusion (the path the setting turns off).
CHILD = """
import json, os
from mnist_multibackend import xla_cpu_flags
from mnist_multibackend.runtime import start
start("jax", "cpu")
import jax, jax.numpy as jnp
from mnist_multibackend.jax_cpu import conv_forms
from mnist_multibackend.runtime import cpu_features
conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC")))
compiled = conv.lower(jnp.zeros((8, 26, 26, 32)), jnp.zeros((3, 3, 32, 32))).compile().as_text()
print(json.dumps({"decision": xla_cpu_flags.state(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
                  "in_force": xla_cpu_flags.in_force(), "ynn_convolution": "ynn_fusion" in compiled,
                  "matmul_convs": conv_forms(cpu_features(), xla_cpu_flags.in_force())["matmul_convs"]}))
"""


def _child(**env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "KERAS_BACKEND")}
    environ.update(env)
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=environ)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.jax
@pytest.mark.skipif(not xla_cpu_flags.xla_knows_setting(), reason="this jaxlib's XLA does not know the setting")
def test_a_jax_run_compiles_convolutions_off_ynnpack_and_keeps_xlas_own_convolutions():
    child = _child(XLA_FLAGS="--xla_cpu_enable_fast_math=false")
    assert child["decision"] == "set" and child["in_force"]
    assert child["xla_flags"] == f"--xla_cpu_enable_fast_math=false {SETTING}"  # the user's flags kept, in front
    assert child["ynn_convolution"] is False
    assert child["matmul_convs"] == []  # XLA's own convolutions: the fastest form with the setting


@pytest.mark.jax
@pytest.mark.skipif(not xla_cpu_flags.xla_knows_setting(), reason="this jaxlib's XLA does not know the setting")
def test_a_users_own_fusion_setting_wins_and_the_forms_follow_it():
    user = f"{FLAG}=+LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
    child = _child(XLA_FLAGS=user)
    assert child["decision"] == "user's setting" and child["xla_flags"] == user
    assert child["in_force"] is False and child["ynn_convolution"] is True
    assert child["matmul_convs"] == ["conv0", "conv1", "conv2", "conv3"]  # the matmul forms, faster there


def test_users_flags_are_the_xla_flags_besides_the_projects_setting(monkeypatch):
    monkeypatch.setitem(xla_cpu_flags._state, "decision", "set")
    assert xla_cpu_flags.users_flags(f"--xla_cpu_max_isa=AVX2 {xla_cpu_flags.SETTING}") == ["--xla_cpu_max_isa=AVX2"]
    assert xla_cpu_flags.users_flags(xla_cpu_flags.SETTING) == []
    # the user's own setting of the same flag is theirs, and recorded
    monkeypatch.setitem(xla_cpu_flags._state, "decision", "user's setting")
    assert xla_cpu_flags.users_flags(xla_cpu_flags.SETTING) == [xla_cpu_flags.SETTING]
    assert xla_cpu_flags.users_flags("--xla_dump_to='/tmp/a b'") == ["--xla_dump_to=/tmp/a b"]
