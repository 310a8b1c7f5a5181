"""engine.device: the dtype `auto` resolves to; the engine's batch-invariant
switch; the profile cache keyed by the kernels."""
import pytest
import torch

from engine import device
from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.device import cpu_flags, cpu_has_fast_bf16, resolve_dtype, resolve_dtype_name
from engine.engine import LLMEngine
from engine.profiler import profile_cache_path
from scheduler.load import StepCostModel
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture
def no_cpuid_bf16(monkeypatch):
    """torch's cpuid probes say no: the decision falls to the flags."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)


def test_explicit_dtypes_are_kept_and_unknown_ones_refused():
    assert resolve_dtype("float32", "cpu") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype_name("float16", "cuda") == "float16"
    with pytest.raises(ValueError):
        resolve_dtype("int3", "cpu")


@pytest.mark.parametrize("flags,fast", [({"avx512f", "amx_bf16"}, True), ({"avx512_bf16"}, True),
                                        ({"avx512f", "avx512_vnni"}, False), (set(), False)])
def test_fast_bf16_from_cpu_flags(no_cpuid_bf16, flags, fast):
    assert cpu_has_fast_bf16(flags) is fast


def test_auto_follows_the_cpu(no_cpuid_bf16, monkeypatch):
    monkeypatch.setattr(device, "cpu_flags", lambda: {"amx_bf16"})
    assert resolve_dtype("auto", "cpu") is torch.bfloat16
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx2"})
    assert resolve_dtype("auto", "cpu") is torch.float32


def test_auto_on_cuda_without_a_gpu_is_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_dtype_name("auto", "cuda:0") == "float32"


def test_cpu_flags_reads_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(str(info)) == {"fpu", "avx512f", "amx_bf16"}
    assert cpu_flags(str(tmp_path / "absent")) == set()


def test_engine_config_defaults_to_auto_and_invariant():
    config = EngineConfig(model="x")
    assert (config.dtype, config.batch_invariant) == ("auto", True)
    with pytest.raises(ValueError):
        EngineConfig(model="x", dtype="int3")


@pytest.mark.parametrize("batch_invariant", [True, False])
def test_engine_sets_the_model_mode(tmp_path, batch_invariant):
    config = EngineConfig(model=make_tiny_model_dir(tmp_path), dtype="auto", batch_invariant=batch_invariant,
                          cache=CacheConfig(block_size=8, num_blocks=32),
                          scheduler=SchedulerConfig(max_num_batched_tokens=32, max_model_len=128))
    engine = LLMEngine(config, step_cost=StepCostModel.flat())
    model = engine.loaded.model
    assert model.batch_invariant is batch_invariant
    assert all(layer.self_attn.batch_invariant is batch_invariant for layer in model.model.layers)
    assert model.kernel_description.endswith("invariant" if batch_invariant else "free")
    assert next(model.parameters()).dtype is resolve_dtype("auto", "cpu")


def test_profile_cache_is_keyed_by_the_kernels():
    paths = {profile_cache_path("/m", "cpu", "auto", 512, kernels)
             for kernels in ("bfloat16/layers=onednn/head=onednn/invariant",
                             "bfloat16/layers=onednn/head=onednn/free",
                             "float32/layers=dense/head=onednn/invariant")}
    assert len(paths) == 3
