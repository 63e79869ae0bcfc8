"""The pass registry: every PassInfo a pass module declares is registered once, under a unique
name, and run_pass refuses an artifact of the other kind."""

import importlib
import pkgutil

import pytest

import edgeport.passes as passes
from edgeport.artifacts import OnnxArtifact
from edgeport.errors import UsageError
from edgeport.passes.registry import PassInfo


def _declared() -> list[PassInfo]:
    found = []
    for module in pkgutil.iter_modules(passes.__path__):
        loaded = importlib.import_module(f"edgeport.passes.{module.name}")
        found += [value for value in vars(loaded).values() if isinstance(value, PassInfo)]
    return found


def test_every_declared_pass_is_registered_once_by_a_unique_name():
    declared = _declared()
    assert {info.config for info in declared} == set(passes.PASSES)
    names = [info.name for info in passes.PASSES.values()]
    assert len(names) == len(set(names)), names
    assert passes.precision_of_step("quantize_search") == "int8" and passes.precision_of_step("optimize") is None


def test_run_pass_refuses_the_other_kind_of_model(tmp_path, digits_onnx):
    onnx_model = OnnxArtifact.from_file(digits_onnx)
    with pytest.raises(UsageError, match="the distill step takes a torch model, and it was given an ONNX model"):
        passes.run_pass(onnx_model, passes.DistillConfig(), ctx=None)


def test_step_kinds_and_finishing_passes_come_from_the_registry():
    kinds = passes.step_kinds()
    assert kinds["distill"] is passes.DistillConfig and kinds["prune:channels"] is passes.ChannelPruneConfig
    assert all(passes.pass_info(config()).kind == "torch" for config in kinds.values())  # a recipe step runs on the torch model
    assert set(passes.prune_methods()) >= {"magnitude", "channels", "lowrank"}
    for info in passes.PASSES.values():
        if info.finishing is not None:  # a torch pass asks for an ONNX pass on the finished file
            assert info.kind == "torch" and passes.pass_info(info.finishing).kind == "onnx"
            assert passes.finishing_steps().count(info.finishing) == 1
