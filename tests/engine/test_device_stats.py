"""Machine counters for the load signal: a fake NVML (busy / idle GPU, our
own process excluded), a fake /proc (run-queue wait on CPU), the background
sampler, and the whole chain into the verification policy's lengths."""
from __future__ import annotations

import gc
import logging
import threading
import time
from types import SimpleNamespace

import pytest

from engine.config import CacheConfig, SchedulerConfig
from engine.device_stats import (DeviceSampler, NvmlSource, SchedstatSource, read_device_stats,
                                 source_for_device)
from scheduler.drafting import DraftingLimits
from scheduler.drafts import DraftBlock
from scheduler.load import DeviceCounters, StepCostModel
from scheduler.output import RunnerOutput
from scheduler.policies import AdaptivePolicy
from scheduler.request import Request, SamplingParams
from scheduler.scheduler import Scheduler

OUR_PID = 4242


class FakeNvml:
    """The slice of pynvml NvmlSource calls, for one GPU."""

    NVML_CLOCK_SM = 1

    class NVMLError(Exception):
        pass

    class NVMLError_NotFound(NVMLError):
        pass

    def __init__(self, others_sm: float = 0.0, ours_sm: float = 0.3, per_process: bool = True,
                 listed_pids=(OUR_PID,)):
        self.others_sm, self.ours_sm = others_sm, ours_sm
        self.per_process, self.listed_pids = per_process, listed_pids
        self.timestamp = 1_000

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("gpu", index)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=round(100 * min(1.0, self.others_sm + self.ours_sm)), memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=3 << 30, total=80 << 30)

    def nvmlDeviceGetClockInfo(self, handle, kind):
        return 1500

    def nvmlDeviceGetMaxClockInfo(self, handle, kind):
        return 1980

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=pid) for pid in self.listed_pids]

    def nvmlDeviceGetProcessUtilization(self, handle, last_seen):
        if not self.per_process:
            raise self.NVMLError("Not Supported")
        self.timestamp += 100
        samples = [SimpleNamespace(pid=OUR_PID, smUtil=100 * self.ours_sm, timeStamp=self.timestamp)]
        if self.others_sm:
            # Two samples of another process, and one of a third.
            samples += [SimpleNamespace(pid=7, smUtil=100 * self.others_sm / 2, timeStamp=self.timestamp),
                        SimpleNamespace(pid=7, smUtil=100 * self.others_sm / 2, timeStamp=self.timestamp),
                        SimpleNamespace(pid=8, smUtil=100 * self.others_sm / 2, timeStamp=self.timestamp)]
        return [s for s in samples if s.timeStamp > last_seen]


def nvml_source(nvml: FakeNvml) -> NvmlSource:
    return NvmlSource("cuda:0", nvml=nvml, pid=OUR_PID)


# ---- NVML ----------------------------------------------------------------------


def test_nvml_reads_others_share_without_our_own():
    counters = nvml_source(FakeNvml(others_sm=0.6, ours_sm=0.3)).read()
    assert counters.gpu_other_utilization == pytest.approx(0.6)
    assert counters.gpu_utilization == pytest.approx(0.9)
    assert (counters.sm_clock_mhz, counters.max_sm_clock_mhz) == (1500, 1980)
    assert counters.gpu_memory_total == 80 << 30
    assert counters.busy == pytest.approx(0.6)


def test_nvml_idle_gpu_and_no_samples_mean_nobody_else():
    source = nvml_source(FakeNvml(others_sm=0.0, ours_sm=0.9))
    assert source.read().gpu_other_utilization == 0.0

    class Silent(FakeNvml):
        def nvmlDeviceGetProcessUtilization(self, handle, last_seen):
            raise self.NVMLError_NotFound()

    assert nvml_source(Silent()).read().gpu_other_utilization == 0.0


def test_nvml_without_per_process_samples_or_our_pid_is_unknown_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="specserve.device"):
        assert nvml_source(FakeNvml(per_process=False)).read().gpu_other_utilization is None
        hidden = nvml_source(FakeNvml(others_sm=0.5, listed_pids=(99,)))
        assert hidden.read().gpu_other_utilization is None
        assert hidden.read().gpu_other_utilization is None
    warnings = [r for r in caplog.records if "cannot tell other tenants" in r.getMessage()]
    assert len(warnings) == 2  # once per source
    assert DeviceCounters(gpu_other_utilization=None).busy == 0.0


def test_cpu_device_has_no_gpu_reading_and_gets_the_schedstat_source():
    assert read_device_stats("cpu") is None
    assert isinstance(source_for_device("cpu"), SchedstatSource)


# ---- CPU run-queue wait -----------------------------------------------------------


def write_schedstat(root, tid: int, run_ns: int, wait_ns: int) -> None:
    (root / str(tid)).mkdir(exist_ok=True)
    (root / str(tid) / "schedstat").write_text(f"{run_ns} {wait_ns} 10\n")


def test_schedstat_wait_share_between_reads(tmp_path):
    write_schedstat(tmp_path, 1, 1_000_000_000, 0)
    write_schedstat(tmp_path, 2, 5_000_000, 0)
    source = SchedstatSource(tmp_path)
    # 60 ms run, 40 ms waited on a run queue, over both threads.
    write_schedstat(tmp_path, 1, 1_050_000_000, 30_000_000)
    write_schedstat(tmp_path, 2, 15_000_000, 10_000_000)
    assert source.read().cpu_wait_fraction == pytest.approx(0.4)
    # Idle since: too little runnable time to say anything.
    assert source.read().cpu_wait_fraction is None


def test_schedstat_of_this_process_reads():
    source = SchedstatSource()
    deadline = time.perf_counter() + 0.05
    while time.perf_counter() < deadline:
        pass
    share = source.read().cpu_wait_fraction
    assert share is None or 0.0 <= share <= 1.0


# ---- the sampler ---------------------------------------------------------------------


class CountingSource:
    def __init__(self):
        self.reads = 0

    def read(self) -> DeviceCounters:
        self.reads += 1
        return DeviceCounters(sampled_at=float(self.reads), cpu_wait_fraction=0.25)


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "specserve-device-sampler"]


def test_sampler_reads_in_the_background_and_stops_when_closed():
    source = CountingSource()
    sampler = DeviceSampler(source, interval_s=0.01).start()
    deadline = time.monotonic() + 5
    while source.reads < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert source.reads >= 3 and sampler.latest().cpu_wait_fraction == 0.25
    sampler.close()
    time.sleep(0.05)
    reads = source.reads
    time.sleep(0.05)
    assert source.reads == reads


def test_sampler_thread_ends_with_its_sampler():
    sampler = DeviceSampler(CountingSource(), interval_s=0.01).start()
    thread = sampler._thread
    assert thread in sampler_threads() and thread.is_alive()
    del sampler
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()


def test_sampler_without_source_reads_nothing():
    sampler = DeviceSampler(None).start()
    assert sampler.latest() is None and sampler.sample_once() is None


# ---- the whole chain: fake NVML -> sampler -> scheduler -> policy ------------------------


def lengths_with_gpu(others_sm: float) -> int:
    """Draft tokens verified in one step of a scheduler whose GPU others use."""
    sampler = DeviceSampler(nvml_source(FakeNvml(others_sm=others_sm)))
    sampler.sample_once()
    # Flat up to 32 tokens, then every token costs: drafts are free only
    # on capacity nobody else uses.
    policy = AdaptivePolicy(StepCostModel([1, 32, 64], [0.05, 0.05, 0.45]), max_batched_tokens=64)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256),
                          CacheConfig(block_size=4, num_blocks=64), drafting=DraftingLimits(max_tokens=8),
                          verify_policy=policy, device_counters=sampler.latest)
    rids = ("sure", "unsure")
    for rid in rids:
        scheduler.add_request(Request(rid, [1, 2, 3], SamplingParams(temperature=0, max_tokens=50)))
    output = scheduler.schedule()
    scheduler.update_from_output(output, RunnerOutput({r: [5] for r in rids}, num_accepted={r: 0 for r in rids}),
                                 lambda request, token: None)
    scheduler.install_drafts({"sure": DraftBlock([6] * 6, [0.9] * 6), "unsure": DraftBlock([6] * 6, [0.4] * 6)})
    return sum(item.num_spec_tokens for item in scheduler.schedule().scheduled)


def test_fake_nvml_busy_gpu_shortens_what_is_verified_idle_gpu_verifies_all():
    idle, half, busy = lengths_with_gpu(0.0), lengths_with_gpu(0.5), lengths_with_gpu(0.95)
    assert idle == 12
    assert idle > half >= busy
