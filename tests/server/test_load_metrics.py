"""/metrics carries the load the scheduler saw: where the step budget went,
the queue's age, the KV room and the machine's other tenants."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from scheduler.load import DeviceCounters, LoadStats
from server.metrics import ServerMetrics
from tests.server.fake_engine import FakeEngineClient


def scrape(load: LoadStats) -> dict[str, dict]:
    engine = FakeEngineClient()
    engine._stats.load = load
    text = ServerMetrics(engine).exposition().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(family.name, {})[tuple(sorted(sample.labels.items()))] = (family.type, sample.value)
    return out


def value(families, name, **labels):
    return families["specserve:" + name][tuple(sorted(labels.items()))]


def test_budget_split_queue_age_kv_room_and_busy_are_exported():
    load = LoadStats(prefill_tokens=120, decode_tokens=40, draft_tokens=33, kv_backoff_steps=2,
                     num_stalled=5, oldest_wait_s=1.5, arrival_rate=0.75, kv_spare_blocks=17, kv_pressure=True, busy=0.4,
                     device=DeviceCounters(gpu_other_utilization=0.4, cpu_wait_fraction=0.1))
    families = scrape(load)
    assert value(families, "scheduled_tokens", kind="prefill") == ("counter", 120)
    assert value(families, "scheduled_tokens", kind="decode") == ("counter", 40)
    assert value(families, "scheduled_tokens", kind="draft") == ("counter", 33)
    assert value(families, "spec_kv_backoff_steps") == ("counter", 2)
    assert value(families, "queue_oldest_wait_seconds") == ("gauge", 1.5)
    assert value(families, "policy_stalled_requests") == ("gauge", 5)
    assert value(families, "policy_arrival_rate") == ("gauge", 0.75)
    assert value(families, "policy_kv_spare_blocks") == ("gauge", 17)
    assert value(families, "policy_kv_pressure") == ("gauge", 1.0)
    assert value(families, "policy_machine_busy") == ("gauge", 0.4)
    assert value(families, "gpu_other_utilization_perc") == ("gauge", 0.4)
    assert value(families, "cpu_runqueue_wait_fraction") == ("gauge", 0.1)


def test_unknown_machine_counters_are_left_out():
    families = scrape(LoadStats())
    assert "specserve:gpu_other_utilization_perc" not in families
    assert "specserve:cpu_runqueue_wait_fraction" not in families
    assert value(families, "policy_machine_busy") == ("gauge", 0.0)
