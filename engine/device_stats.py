"""Machine counters: NVML on CUDA, run-queue wait on CPU, read off the step loop.

Two readers share this module:
- /metrics reads `read_device_stats` at scrape time (GPU utilisation,
  memory and clocks);
- the verification policy reads `DeviceSampler.latest()`, the last
  `scheduler.load.DeviceCounters` a daemon thread took at a fixed rate, so
  the step loop never waits on NVML or /proc.

What "others use the machine" means on each device:
- CUDA: the share of time other processes' kernels ran, from NVML's
  per-process samples. Where NVML cannot attribute time to processes (a
  driver without per-process accounting, or a PID namespace that hides our
  own PID), that share is unknown: reported as None, with a warning once.
- CPU: the share of this process's runnable time that its threads spent
  waiting for a CPU someone else held (/proc/self/task/*/schedstat: time
  run and time waited on a run queue, in nanoseconds).
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from scheduler.load import DeviceCounters

log = logging.getLogger("specserve.device")

SAMPLE_INTERVAL_S = 0.5
# Below this much runnable time in an interval, the wait share says nothing.
MIN_RUNNABLE_NS = 5_000_000


@dataclass
class DeviceReading:
    """A scrape-time GPU reading for /metrics."""

    utilization: float  # 0-1
    memory_used: int
    memory_total: int
    sm_clock_mhz: float | None = None
    max_sm_clock_mhz: float | None = None


def _import_nvml():
    import pynvml  # from nvidia-ml-py, the `cuda` extra

    return pynvml


@lru_cache(maxsize=None)
def _nvml_handle(index: int):
    nvml = _import_nvml()
    nvml.nvmlInit()
    return nvml.nvmlDeviceGetHandleByIndex(index)


def _cuda_index(device: str) -> int:
    return int(str(device).partition(":")[2] or 0)


def read_device_stats(device: str) -> DeviceReading | None:
    """None on CPU. On CUDA without nvidia-ml-py this raises: install the
    `cuda` extra rather than silently exporting nothing."""
    if not str(device).startswith("cuda"):
        return None
    nvml = _import_nvml()
    handle = _nvml_handle(_cuda_index(device))
    util = nvml.nvmlDeviceGetUtilizationRates(handle)
    mem = nvml.nvmlDeviceGetMemoryInfo(handle)
    clock, max_clock = _sm_clocks(nvml, handle)
    return DeviceReading(util.gpu / 100.0, int(mem.used), int(mem.total), clock, max_clock)


def _sm_clocks(nvml, handle) -> tuple[float | None, float | None]:
    try:
        return (float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)),
                float(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM)))
    except nvml.NVMLError:  # some boards do not report clocks
        return None, None


class CounterSource(Protocol):
    """Anything that reads the machine once: NVML, schedstat, a fake in tests."""

    def read(self) -> DeviceCounters: ...


class NvmlSource:
    """One GPU's counters, with other processes' share of its time.

    `nvml` is the pynvml module (tests pass a fake one); `pid` is this
    process as NVML sees it.
    """

    def __init__(self, device: str, nvml=None, pid: int | None = None,
                 clock=time.monotonic):
        self.nvml = nvml or _import_nvml()
        self.nvml.nvmlInit()
        self.handle = self.nvml.nvmlDeviceGetHandleByIndex(_cuda_index(device))
        self.pid = os.getpid() if pid is None else pid
        self.clock = clock
        self._last_timestamp = 0  # NVML's microseconds of the newest sample seen
        self._warned = False

    def read(self) -> DeviceCounters:
        nvml, handle = self.nvml, self.handle
        util = nvml.nvmlDeviceGetUtilizationRates(handle)
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        clock, max_clock = _sm_clocks(nvml, handle)
        return DeviceCounters(sampled_at=self.clock(), gpu_utilization=util.gpu / 100.0,
                              gpu_other_utilization=self._other_utilization(),
                              gpu_memory_used=int(mem.used), gpu_memory_total=int(mem.total),
                              sm_clock_mhz=clock, max_sm_clock_mhz=max_clock)

    def _other_utilization(self) -> float | None:
        """Sum over other processes of their mean SM share since the last read."""
        samples = self._process_samples()
        if samples is None:
            return None
        shares: dict[int, list[float]] = {}
        for sample in samples:
            shares.setdefault(sample.pid, []).append(sample.smUtil / 100.0)
            self._last_timestamp = max(self._last_timestamp, sample.timeStamp)
        if shares and self.pid not in self._compute_pids():
            return self._unknown("NVML does not list this process (another PID namespace?)")
        others = sum(sum(v) / len(v) for pid, v in shares.items() if pid != self.pid)
        return min(1.0, others)

    def _process_samples(self):
        nvml = self.nvml
        try:
            return nvml.nvmlDeviceGetProcessUtilization(self.handle, self._last_timestamp)
        except nvml.NVMLError_NotFound:
            return []  # no process ran a kernel since the last read
        except nvml.NVMLError as exc:
            return self._unknown(f"no per-process utilisation from NVML ({exc})")

    def _compute_pids(self) -> set[int]:
        return {p.pid for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)}

    def _unknown(self, why: str) -> None:
        if not self._warned:
            log.warning("%s: the verification policy cannot tell other tenants' GPU load "
                        "from its own and will not price it", why)
            self._warned = True
        return None


class SchedstatSource:
    """The share of this process's runnable time spent waiting for a CPU.

    Linux's /proc/<pid>/task/<tid>/schedstat gives, per thread, nanoseconds
    run and nanoseconds waited on a run queue; summed over the threads and
    differenced between reads, wait / (run + wait) is how much of the CPU
    this process wanted went to someone else.
    """

    def __init__(self, proc: Path = Path("/proc/self/task"), clock=time.monotonic):
        if not proc.is_dir():
            raise FileNotFoundError(f"{proc} is missing: no run-queue statistics on this system")
        self.proc = proc
        self.clock = clock
        self._last = self._totals()

    def _totals(self) -> tuple[int, int]:
        run = wait = 0
        for task in self.proc.iterdir():
            try:
                fields = (task / "schedstat").read_text().split()
            except OSError:  # the thread ended between listing and reading
                continue
            run, wait = run + int(fields[0]), wait + int(fields[1])
        return run, wait

    def read(self) -> DeviceCounters:
        run, wait = self._totals()
        d_run, d_wait = run - self._last[0], wait - self._last[1]
        self._last = (run, wait)
        runnable = d_run + d_wait
        share = d_wait / runnable if runnable >= MIN_RUNNABLE_NS else None
        return DeviceCounters(sampled_at=self.clock(), cpu_wait_fraction=share)


def source_for_device(device: str) -> CounterSource | None:
    """NVML on CUDA, schedstat on CPU; None (with a warning) where the
    machine offers neither, so the policy prices no outside load."""
    try:
        if str(device).startswith("cuda"):
            return NvmlSource(device)
        return SchedstatSource()
    except (ImportError, OSError, RuntimeError) as exc:
        log.warning("no machine counters on %s (%s): the verification policy will not see "
                    "other processes' load (install the `cuda` extra on CUDA)", device, exc)
        return None


class DeviceSampler:
    """Reads a source every `interval_s` seconds on a daemon thread;
    `latest()` returns the last reading without waiting.

    The thread holds the sampler only weakly: it ends when the sampler is
    closed or garbage-collected (an engine dropped in a test).
    """

    def __init__(self, source: CounterSource | None, interval_s: float = SAMPLE_INTERVAL_S):
        self.source = source
        self.interval_s = interval_s
        self._latest: DeviceCounters | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed = False  # a read has raised (its traceback was logged once)

    def latest(self) -> DeviceCounters | None:
        return self._latest

    def sample_once(self) -> DeviceCounters | None:
        if self.source is not None:
            self._latest = self.source.read()
        return self._latest

    def start(self) -> "DeviceSampler":
        if self.source is not None and self._thread is None:
            self._thread = threading.Thread(target=_sample_forever, name="specserve-device-sampler",
                                            args=(weakref.ref(self), self._stop, self.interval_s),
                                            daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()


def _sample_forever(ref: "weakref.ref[DeviceSampler]", stop: threading.Event, interval_s: float) -> None:
    while not stop.wait(interval_s):
        sampler = ref()
        if sampler is None:
            return
        try:
            sampler.sample_once()
        except Exception:  # a failing counter must not take the server down
            log.warning("reading machine counters failed; the policy keeps the last reading",
                        exc_info=not sampler.failed)
            sampler.failed = True
        del sampler  # do not keep the sampler alive while waiting
