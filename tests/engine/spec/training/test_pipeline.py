"""engine/spec/training/pipeline.py: the dtype `auto` resolves to, and the
training data assembled by role (train, held-out, evaluation sets)."""
from __future__ import annotations

import os
import tempfile
from types import SimpleNamespace

import pytest
import torch

from engine import device
from engine.device import resolve_dtype
from engine.spec.training import pipeline
from engine.spec.training.data import Prompt
from engine.spec.training.pipeline import native_bf16, prepare_data


def fake_cpuinfo(monkeypatch, flags: str | None):
    """The CPU as engine/device.py sees it: `flags` in /proc/cpuinfo (None:
    unreadable, no flags), torch's cpuid probes silent, oneDNN present."""
    cpuinfo = device.cpu_flags
    monkeypatch.setattr(device, "cpu_flags", lambda: set() if flags is None else cpuinfo(str(write_cpuinfo(flags))))
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)


def write_cpuinfo(flags: str):
    """A /proc/cpuinfo look-alike: two processors, the first with `flags`."""
    path = os.path.join(tempfile.mkdtemp(), "cpuinfo")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t: fpu\n")
    return path


@pytest.mark.parametrize("flags,native", [("fpu avx512f amx_bf16", True), ("avx512_bf16 sse", True),
                                          ("fpu avx2 avx512f", False), (None, False)])
def test_native_bf16_reads_the_cpu_flags(monkeypatch, flags, native):
    fake_cpuinfo(monkeypatch, flags)
    assert native_bf16("cpu") is native
    assert resolve_dtype("auto", "cpu") is (torch.bfloat16 if native else torch.float32)


def test_auto_on_cuda_without_bf16_is_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert native_bf16("cuda:0") is False and resolve_dtype("auto", "cuda:0") is torch.float32


def test_explicit_dtypes_are_kept_and_unknown_ones_refused(monkeypatch):
    fake_cpuinfo(monkeypatch, "amx_bf16")  # `auto` would say bfloat16: explicit names win
    assert resolve_dtype("float32", "cpu") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError):  # engine/device.py's refusal of an unknown name
        resolve_dtype("int3", "cpu")


def data_args(work) -> SimpleNamespace:
    """train-draft's data options, small."""
    return SimpleNamespace(data="toy", heldout_data="toy", eval_data="mtbench:2", conversations=None,
                           skip_conversations=0,
                           responses="target", max_new_tokens=6, max_prompt_tokens=64, max_len=128, top_k=4,
                           gen_batch=4, gen_threads=1, gen_temperature=0.0, seed=0, no_progress=True)


def test_prepare_data_assembles_every_role(tiny_target, tmp_path, monkeypatch):
    """Prompts from a stand-in source (the data packages are optional; the
    train and test splits and MT-Bench's unsplit set get prompts of their
    own): train, held-out and evaluation features each from their prompts,
    and the held-out prompts kept for calibration."""
    prompts = {"train": [Prompt("toy", f"toy/train-{i}", f"Tell me about fox {i}.") for i in range(3)],
               "test": [Prompt("toy", f"toy/test-{i}", f"Tell me about dog {i}.") for i in range(2)],
               None: [Prompt("toy", f"toy/eval-{i}", f"Write a poem about cat {i}.") for i in range(2)]}
    monkeypatch.setattr(pipeline, "load_prompts", lambda spec, split=None: prompts[split])
    data = prepare_data(data_args(tmp_path), tiny_target, str(tmp_path), (1, 3))
    ids = lambda features: sorted(features.sequence(i).id for i in range(len(features)))  # noqa: E731
    assert ids(data.train) == [p.id for p in prompts["train"]]
    assert ids(data.heldout) == [p.id for p in prompts["test"]]
    assert list(data.eval_sets) == ["mtbench"] and ids(data.eval_sets["mtbench"]) == [p.id for p in prompts[None]]
    assert [p.id for p in data.heldout_prompts] == [p.id for p in prompts["test"]]
    assert data.train_dirs == [os.path.join(str(tmp_path), "features-train-responses")]
    sequence = data.train.sequence(0)
    assert sequence.aux.shape[1] == 2 * tiny_target.config.hidden_size and sequence.topk_ids.shape[1] == 4
    assert 0 < data.train.num_trainable_tokens <= 3 * 6


def test_skipped_conversations_are_left_out_and_the_next_ones_taken(tiny_target, monkeypatch):
    """--skip-conversations 3 --conversations 2: the fourth and fifth
    train-split conversations, none of the first three (new data for a head
    trained on an earlier folder's first conversations)."""
    from engine.spec.training.data import Conversation

    def conversations(limit, split):
        assert split == "train"
        chat = lambda i: Conversation(f"toy/c{i}", [{"role": "user", "content": f"Hi {i}"},  # noqa: E731
                                                    {"role": "assistant", "content": f"Hello {i}."}])
        return (chat(i) for i in range(limit))

    monkeypatch.setattr(pipeline, "sharegpt_conversations", conversations)
    args = SimpleNamespace(conversations=2, skip_conversations=3, max_len=64)
    assert [s.id for s in pipeline._conversations(args, tiny_target)] == ["toy/c3", "toy/c4"]
    args.skip_conversations = 0
    assert [s.id for s in pipeline._conversations(args, tiny_target)] == ["toy/c0", "toy/c1"]
