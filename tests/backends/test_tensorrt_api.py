"""The TensorRT backend against the real TensorRT Python API, without TensorRT.

The bindings wheels on PyPI (``tensorrt-cu12-bindings`` 10.x, ``tensorrt-cu13-bindings`` 11.x) hold the
compiled module whose pybind11 tables name every class, method, property and enum value; they cannot be
imported here (no libnvinfer), but their names can be read. Every TensorRT name the backend uses must
exist in each version whose code path uses it. Skips when the wheels cannot be fetched.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from calibkit.backends import tensorrt as backend

WHEELS = {10: "tensorrt-cu12-bindings==10.13.3.9", 11: "tensorrt-cu13-bindings==11.4.0.106"}
# Locals of the backend that hold TensorRT objects; attribute chains from them are TensorRT's API.
TRT_OBJECTS = {"trt", "logger", "builder", "network", "parser", "config", "profile", "tensor"}
TRT_MEMBERS = {"engine", "context", "_trt"}  # self.<member> holding a TensorRT object
IDENTIFIER = re.compile(rb"[A-Za-z_][A-Za-z0-9_]{2,}")


def _wheel_names(requirement: str, folder: Path) -> set[str]:
    """Identifiers in a bindings wheel: strings of the compiled module plus the package's Python names."""
    folder.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_")
    found = list(folder.glob(f"{name}-*.whl"))
    if not found:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--platform", "manylinux_2_28_x86_64", "--python-version", "311", "-d", str(folder),
                               "--quiet", requirement], capture_output=True, text=True, timeout=300)
        found = list(folder.glob(f"{name}-*.whl"))
        if done.returncode != 0 or not found:
            pytest.skip(f"cannot fetch {requirement} from PyPI: {done.stderr.strip()[-200:]}")
    with zipfile.ZipFile(found[0]) as wheel:
        binary = wheel.read("tensorrt_bindings/tensorrt.so")
        package = wheel.read("tensorrt_bindings/__init__.py").decode()
    names = {m.decode() for m in IDENTIFIER.findall(binary)}
    tree = ast.parse(package)
    names |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    names |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    return names


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory) -> dict[int, set[str]]:
    from calibkit.fileio import cache_dir

    folder = cache_dir() / "tensorrt-bindings-wheels"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = tmp_path_factory.mktemp("wheels")
    return {major: _wheel_names(requirement, folder) for major, requirement in WHEELS.items()}


def _chain(node: ast.Attribute) -> list[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "")
    return parts[::-1]


def _names_used(function: ast.FunctionDef) -> set[str]:
    """TensorRT attributes a backend function touches, TensorRT base classes it names by string, and the
    methods its subclasses of TensorRT classes override (they must exist in the base)."""
    used = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "parent", None), ast.Attribute):
            chain = _chain(node)
            if chain[0] in TRT_OBJECTS:
                used.update(chain[1:])
            elif chain[0] == "self" and len(chain) > 2 and chain[1] in TRT_MEMBERS:
                used.update(chain[2:])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
                and isinstance(node.args[0], ast.Name) and node.args[0].id == "trt":
            used.update(backend._CACHE_HEADER_ALGOS.values())
        if isinstance(node, ast.ClassDef):
            used.update(f.name for f in node.body if isinstance(f, ast.FunctionDef) and not f.name.startswith("__"))
    return used


def backend_usage() -> dict[str, set[str]]:
    """``{"10": names on TensorRT 10-only paths, "both": every other TensorRT name}`` from the source."""
    tree = ast.parse(Path(backend.__file__).read_text())
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node  # type: ignore[attr-defined]
    usage: dict[str, set[str]] = {"10": set(), "both": set()}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and isinstance(node.parent, (ast.Module, ast.ClassDef)):
            usage["10" if node.name in backend.TRT10_ONLY else "both"] |= _names_used(node)
    return usage


def test_the_usage_extraction_sees_both_code_paths():
    usage = backend_usage()
    assert {"int8_calibrator", "IInt8EntropyCalibrator2", "read_calibration_cache", "STRONGLY_TYPED"} <= usage["10"]
    assert {"set_memory_pool_limit", "execute_async_v3", "create_network", "report_layer_time"} <= usage["both"]


def _has(surface: set[str], name: str) -> bool:
    """``name`` is in the module; the linker stores a short string inside a longer one ending with it
    (``INPUT`` in ``CONDITIONAL_INPUT``), so a suffix counts."""
    return name in surface or any(found.endswith(name) for found in surface)


def test_every_tensorrt_name_the_backend_uses_exists_where_it_is_used(surfaces):
    usage = backend_usage()
    missing_10 = sorted(n for n in usage["10"] | usage["both"] if not _has(surfaces[10], n))
    missing_11 = sorted(n for n in usage["both"] if not _has(surfaces[11], n))
    assert not missing_10, f"not in TensorRT 10 ({WHEELS[10]}): {missing_10}"
    assert not missing_11, f"not in TensorRT 11 ({WHEELS[11]}): {missing_11}"
    dropped = [n for n in ("int8_calibrator", "IInt8EntropyCalibrator2") if not _has(surfaces[11], n)]
    assert dropped == ["int8_calibrator", "IInt8EntropyCalibrator2"], "TensorRT 11 dropped implicit quantization"
