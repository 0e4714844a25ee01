"""What ``pip install .`` installs: the ``mnist_multibackend`` package and nothing beside it.

The benchmark feature ships as ``mnist_multibackend.bench``; the checkout's
``benchmarks/`` folder (studies and results) and ``tests/`` stay out.
"""

import ast
import shutil
import subprocess
import sys
import zipfile

from conftest import REPO

TOP_LEVEL = ("pyproject.toml", "README.md", "mnist_multibackend", "benchmarks", "tests")


def test_the_wheel_holds_only_the_package_and_imports_no_benchmarks(tmp_path):
    # Built from a copy, so that the build leaves nothing (build/, *.egg-info) in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in TOP_LEVEL:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(tmp_path / "wheels"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        modules = {name: archive.read(name) for name in names if name.endswith(".py")}
    outside = [n for n in names if not n.startswith(("mnist_multibackend/", "mnist_multibackend-"))]
    assert not outside, outside
    assert all(n.split("/")[0].endswith(".dist-info") for n in names if n.startswith("mnist_multibackend-"))
    assert {"mnist_multibackend/cli.py", "mnist_multibackend/bench/__init__.py", "mnist_multibackend/bench/workers.py",
            "mnist_multibackend/bench/matrix.py", "mnist_multibackend/bench/time_to_accuracy.py"} <= set(names)

    def imported(tree):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                yield node.module

    offenders = {name: top for name, text in modules.items()
                 for top in imported(ast.parse(text)) if top.split(".")[0] == "benchmarks"}
    assert not offenders, offenders
