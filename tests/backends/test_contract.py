"""Every registered backend keeps the backend contract; a plug-in registered at run time is asked, not named."""

import dataclasses

import pytest

from calibkit.backends import base
from calibkit.backends.base import BackendInfo, backend_info, register_backend, require
from calibkit.backends.contract import check_backend_contract
from calibkit.errors import CalibkitError


@pytest.mark.parametrize("name", ["ort-cpu", "ort-cuda", "tensorrt", "tensorrt-rtx"])
def test_builtin_backends_keep_the_contract(name, small_model):
    ran = check_backend_contract(backend_info(name), small_model)
    assert ran or name != "ort-cpu", "ONNX Runtime on the CPU runs everywhere"


def test_a_plugin_backend_is_asked_for_its_capabilities(small_model):
    cpu = backend_info("ort-cpu")
    # a CPU backend that cannot return intermediate tensors: the statistics pass refuses it by its entry
    plugin = dataclasses.replace(cpu, name="plugin-cpu", label="Plug-in CPU", exposes_tensors=False,
                                 stats_batch=None, options=frozenset())
    register_backend(plugin)
    try:
        assert check_backend_contract(plugin, small_model)
        with pytest.raises(CalibkitError, match="backend plugin-cpu cannot run the statistics pass; choose one of"):
            require("plugin-cpu", lambda info: info.stats_batch is not None, "the statistics pass")
    finally:
        base._BACKENDS.pop("plugin-cpu")


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(CalibkitError, match="unknown backend 'nope'; choose one of ort-cpu, ort-cuda, tensorrt"):
        backend_info("nope")


def test_every_entry_is_a_backend_info():
    base._register_builtins()
    assert all(isinstance(info, BackendInfo) for info in base._BACKENDS.values())
