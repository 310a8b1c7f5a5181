"""Interleaved engine-level A/B: speculation off, n-gram, a head alone and
the hybrid (head + n-gram) as in-process engines sharing one loaded model,
at each concurrency C `--prompts` prompts of a dataset (at least 2 x C) sent
by C streams (a stream sends its next prompt when its answer finished),
output tok/s over each run's steady part (while prompts are still waiting,
so all C streams are busy; whole-run figures beside them), rounds in
rotating order (the host's speed drifts between
rounds; medians of interleaved rounds are steadier than a one-after-another
sweep). A diagnostic beside bench.spec_sweep, not a replacement: no HTTP.

    OMP_NUM_THREADS=1 python -m tools.engine_ab mt-bench 8,32 3
    OMP_NUM_THREADS=1 python -m tools.engine_ab humaneval 1 3 --prompts 8 \\
        --methods off,ngram,dspark,hybrid --out bench/results/NAME

`--lockstep` runs the methods' streams side by side at every concurrency,
the methods taking engine steps in turn, each step timed alone (the
host's speed drifts over seconds; a step apart it does not). Each
method's ratio to `off` (and to `--versus METHOD`) is also taken within
each round, then its median.

`--candidate PATH` adds `dspark-candidate`, `hybrid-candidate` and
`hybrid16-candidate`: the same configurations over another checkpoint (a
retrained or recalibrated head), so a head is adopted on a side-by-side
run, not on two runs of a drifting host. `--candidate-datastore PATH`
likewise adds `ngram-ds-candidate` and `hybrid-ds-candidate`: n-gram and
the hybrid drafting from another corpus datastore.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import deque
from dataclasses import dataclass, replace

import torch

from bench.datasets import DATASETS, sample
from bench.spec_sweep import rotated
from engine.config import EngineConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.models.default import default_model_path
from scheduler.request import SamplingParams
from tools.engine_ab_ablations import ABLATIONS

HEAD = "checkpoints/dspark-smollm2"
DATASTORE = "engine/spec/datastores/smollm2.safetensors.xz"
# The configurations run again over a candidate, and the flag that names it.
HEAD_CANDIDATES = ("dspark", "hybrid", "hybrid16")  # --candidate CHECKPOINT
DATASTORE_CANDIDATES = ("ngram-ds", "hybrid-ds")  # --candidate-datastore PATH


def speculative_configs(head: str, candidate: str | None = None, candidate_datastore: str | None = None,
                        datastore: str = DATASTORE) -> dict[str, SpeculativeConfig]:
    """The configurations `specserve serve` would run for each method, the
    `-ds` ones over `datastore` (and the head ones again over `candidate`,
    the datastore ones over `candidate_datastore`, suffixed `-candidate`)."""
    configs = _configs_over(head, datastore)
    if candidate:
        configs.update({f"{name}-candidate": replace(configs[name], draft_model=candidate)
                        for name in HEAD_CANDIDATES})
    if candidate_datastore:
        configs.update({f"{name}-candidate": replace(configs[name], ngram_datastore=candidate_datastore)
                        for name in DATASTORE_CANDIDATES})
    return configs


def _configs_over(head: str, datastore: str) -> dict[str, SpeculativeConfig]:
    return {"off": SpeculativeConfig(method="none"),
            "ngram": SpeculativeConfig(method="ngram", policy="adaptive", num_speculative_tokens=8),
            # n-gram allowed the longest block the config takes: what copy-heavy
            # prompts gain from longer matched runs where the policy verifies them
            "ngram16": SpeculativeConfig(method="ngram", policy="adaptive", num_speculative_tokens=16),
            "dspark": SpeculativeConfig(method="dspark", draft_model=head, policy="adaptive",
                                        num_speculative_tokens=7),
            "hybrid": SpeculativeConfig(method="hybrid", draft_model=head, policy="adaptive",
                                        num_speculative_tokens=7),
            # the hybrid's n-gram up to 16 drafts, its head up to its block (7)
            "hybrid16": SpeculativeConfig(method="hybrid", draft_model=head, policy="adaptive",
                                          num_speculative_tokens=16),
            # the same two drafting from the corpus datastore beside prompt lookup
            "ngram-ds": SpeculativeConfig(method="ngram", policy="adaptive", num_speculative_tokens=8,
                                          ngram_datastore=datastore),
            # ngram-ds verifying the other source's block beside its own (greedy token trees)
            "ngram-ds-tree": SpeculativeConfig(method="ngram", policy="adaptive", num_speculative_tokens=8,
                                               ngram_datastore=datastore, ngram_alternatives=True),
            # n-gram up to 8 drafts as in ngram-ds (serve's default), the head up to its block (7)
            "hybrid-ds": SpeculativeConfig(method="hybrid", draft_model=head, policy="adaptive",
                                           num_speculative_tokens=8, ngram_datastore=datastore)}


def dataset_prompt_ids(tokenizer, dataset: str, count: int) -> list[list[int]]:
    """The first `count` prompts of a bench dataset (seed 0), in the target's chat template."""
    return [tokenizer.encode(tokenizer.apply_chat_template(list(p.messages), add_generation_prompt=True))
            for p in sample(DATASETS[dataset](), count, 0)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("concurrencies", help="comma-separated, e.g. 1,8,32")
    parser.add_argument("rounds", type=int)
    parser.add_argument("--methods", default="off,ngram,hybrid",
                        help=f"of {sorted(speculative_configs(HEAD)) + sorted(ABLATIONS)}")
    parser.add_argument("--prompts", type=int, default=0, help="prompts per concurrency (default and floor: 2 x C)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--draft-model", default=HEAD)
    parser.add_argument("--candidate", default=None, metavar="CHECKPOINT",
                        help="another head: adds the methods dspark-candidate, hybrid-candidate, hybrid16-candidate")
    parser.add_argument("--candidate-datastore", default=None, metavar="PATH",
                        help="another corpus datastore: adds the methods ngram-ds-candidate, hybrid-ds-candidate")
    parser.add_argument("--datastore", default=DATASTORE, metavar="PATH",
                        help="the corpus datastore of ngram-ds and hybrid-ds (default: the shipped one)")
    parser.add_argument("--model", default=None, help="target (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--out", default="", help="directory for results.json")
    parser.add_argument("--lockstep", action="store_true",
                        help="the methods take engine steps in turn, each step timed alone (every concurrency)")
    parser.add_argument("--versus", default="", metavar="METHOD",
                        help="also each method's paired ratio to METHOD (default: to off only)")
    return parser.parse_args(argv)


def build_engines(methods: list[str], head: str, model: str, candidate: str | None = None,
                  candidate_datastore: str | None = None, datastore: str = DATASTORE) -> dict[str, LLMEngine]:
    configs, engines, loaded = speculative_configs(head, candidate, candidate_datastore, datastore), {}, None
    for name in methods:
        base, change = ABLATIONS.get(name, (name, None))
        if base not in configs:
            flags = {f"{n}-candidate": " (pass --candidate CHECKPOINT)" for n in HEAD_CANDIDATES}
            flags.update({f"{n}-candidate": " (pass --candidate-datastore PATH)" for n in DATASTORE_CANDIDATES})
            hint = flags.get(name, "")
            raise SystemExit(f"unknown method {name!r}{hint}; known: {sorted(configs) + sorted(ABLATIONS)}")
        engines[name] = LLMEngine(EngineConfig(model=model, speculative=configs[base],
                                               machine_counters=False), loaded=loaded)
        if change:
            change(engines[name])
        loaded = engines[name].loaded
    return engines


def run_rounds(engines: dict[str, LLMEngine], prompts: list[list[int]], concurrencies: list[int],
               counts: dict[int, int], rounds: int, params: SamplingParams,
               lockstep: bool = False) -> dict[int, dict[str, list[StreamRun]]]:
    """Each method's runs per concurrency and round; methods rotate their
    order per round (with `lockstep`, stepping in turn)."""
    names = list(engines)
    results = {c: {n: [] for n in names} for c in concurrencies}
    for r in range(rounds):
        for c in concurrencies:
            if lockstep:
                for name, run in run_in_lockstep(engines, prompts[:counts[c]], r, params, c).items():
                    results[c][name].append(run)
                continue
            for name in rotated(names, r):
                results[c][name].append(run_streams(engines[name], prompts[:counts[c]], c, params))
        print("round", r, {c: {n: round(v[-1].steady_tok_s, 1) for n, v in d.items()} for c, d in results.items()},
              flush=True)
    return results


def run_in_lockstep(engines: dict[str, LLMEngine], prompts: list[list[int]], round_index: int,
                    params: SamplingParams, streams: int = 1) -> dict[str, StreamRun]:
    """`streams` streams per method, all methods answering `prompts`, the
    methods taking engine steps in turn (order rotated per round) and each
    step timed alone: the host's speed drifts by 10-20% over seconds, so
    methods compared a step apart see the same host, where prompt by prompt
    or run by run they do not. A method's run is the sum of its steps; one
    that finishes first leaves the others stepping alone."""
    drivers = {n: StreamDriver(engines[n], prompts, streams, params) for n in rotated(list(engines), round_index)}
    while any(d.busy for d in drivers.values()):
        for driver in drivers.values():
            if driver.busy:
                driver.step()
    return {n: d.run() for n, d in drivers.items()}


@dataclass
class StreamRun:
    """Output tokens and seconds of a run, whole and in its steady part:
    the steps that began while prompts were still waiting to be sent, so
    every stream had a request in flight. The rest is the drain, where the
    run waits for its slowest streams: with a few prompts per stream it is
    much of the run, and speculation, which finishes some requests early,
    gains nothing there. One stream waits for no other: its whole run is
    steady."""

    tokens: int
    seconds: float
    steady_tokens: int
    steady_seconds: float

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def steady_tok_s(self) -> float:
        return self.steady_tokens / self.steady_seconds


class StreamDriver:
    """`streams` users of one engine sending `prompts`, each its next prompt
    as soon as its last answer finished, so `streams` requests stay in
    flight until the prompts run out (the HTTP sweep's load, not batches
    that wait for their slowest member: those give speculation nothing for
    the requests it finishes early). Advanced one timed engine step at a
    time, so several drivers can take turns."""

    def __init__(self, engine: LLMEngine, prompts: list[list[int]], streams: int,
                 params: SamplingParams | list[SamplingParams]):
        if streams > 1 and len(prompts) <= streams:
            raise ValueError(f"{len(prompts)} prompts for {streams} streams: no steady part (need more prompts)")
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        self.engine, self.streams = engine, streams
        self.queue = deque(zip(range(len(prompts)), prompts, params_list))
        self.in_flight: set[str] = set()
        self.tokens = self.steady_tokens = 0
        self.seconds = self.steady_seconds = 0.0
        while self.queue and len(self.in_flight) < streams:
            self._send_next()

    @property
    def busy(self) -> bool:
        return bool(self.in_flight)

    def _send_next(self) -> None:
        index, prompt, request_params = self.queue.popleft()
        request_id = f"ab-{time.monotonic_ns()}-{index}"
        self.engine.add_request(request_id, prompt, request_params)
        self.in_flight.add(request_id)

    def step(self) -> None:
        steady = bool(self.queue) or self.streams == 1
        started = time.perf_counter()
        outputs = self.engine.step()
        seconds = time.perf_counter() - started
        step_tokens = 0
        for out in outputs:
            if out.request_id not in self.in_flight:
                continue
            step_tokens += len(out.new_token_ids)
            if out.finished:
                self.in_flight.discard(out.request_id)
                if self.queue:
                    self._send_next()
        for failure in self.engine.take_failures():
            raise failure.as_error() from failure.error
        self.tokens += step_tokens
        self.seconds += seconds
        if steady:
            self.steady_tokens += step_tokens
            self.steady_seconds += seconds

    def run(self) -> StreamRun:
        return StreamRun(self.tokens, self.seconds, self.steady_tokens, self.steady_seconds)


def run_streams(engine: LLMEngine, prompts: list[list[int]], streams: int,
                params: SamplingParams | list[SamplingParams]) -> StreamRun:
    """One engine's run of `prompts` by `streams` streams (`StreamDriver`)."""
    driver = StreamDriver(engine, prompts, streams, params)
    while driver.busy:
        driver.step()
    return driver.run()


def medians_and_ratios(tok_s: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """Per method: the median over rounds and its ratio to `off`'s (to the
    first method's where `off` was not run)."""
    medians = {n: statistics.median(v) for n, v in tok_s.items()}
    base = medians.get("off") or next(iter(medians.values()))
    return {n: (m, m / base) for n, m in medians.items()}


def paired_ratios(tok_s: dict[str, list[float]], base: str) -> dict[str, dict[str, float]]:
    """Per method: its tok/s over `base`'s in the same round, median and
    range over the rounds (rounds pair methods that ran minutes apart at
    most, so the host's drift cancels more than in a ratio of medians)."""
    out = {}
    for name, values in tok_s.items():
        ratios = [v / b for v, b in zip(values, tok_s[base])]
        out[name] = {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                     "max": round(max(ratios), 3)}
    return out


def drafter_stats(engine: LLMEngine) -> dict:
    """The drafter's own figures (the hybrid's choices and payoff); {} for none."""
    stats = getattr(engine.drafter, "stats", None)  # engine.drafter is None with speculation off
    return stats() if stats else {}


def verification_stats(engine: LLMEngine) -> dict:
    """Over the whole run (every concurrency and round, warm-up included):
    engine steps, verified blocks, drafts verified and accepted, and how
    often the policy chose each verify length; with token trees, the
    alternative branches verified, their drafts, wins and drafts kept."""
    stats = engine.snapshot_stats()
    lengths = stats.policy.verify_length_counts if stats.policy else []
    figures = {"steps": stats.num_steps, "verified_blocks": stats.num_drafts,
               "drafts_verified": stats.num_draft_tokens, "drafts_accepted": stats.num_accepted_tokens,
               "verify_length_counts": list(lengths)}
    if stats.num_alternatives:
        figures.update(alternatives=stats.num_alternatives,
                       alternative_drafts=stats.num_alternative_draft_tokens,
                       alternative_wins=stats.num_alternative_wins,
                       alternative_accepted=stats.num_alternative_accepted_tokens)
    return figures


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    concurrencies = [int(c) for c in args.concurrencies.split(",")]
    if args.versus and args.versus not in args.methods.split(","):
        raise SystemExit(f"--versus {args.versus}: not one of the methods run ({args.methods})")
    counts = {c: max(2 * c, args.prompts) // c * c for c in concurrencies}
    engines = build_engines(args.methods.split(","), args.draft_model, args.model or default_model_path(),
                            args.candidate, args.candidate_datastore, args.datastore)
    tokenizer = next(iter(engines.values())).loaded.tokenizer
    prompts = dataset_prompt_ids(tokenizer, args.dataset, max(counts.values()))
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    for engine in engines.values():  # warm-up: kernels, step-cost profile
        engine.generate(prompts[:2], params)
    runs = run_rounds(engines, prompts, concurrencies, counts, args.rounds, params, args.lockstep)
    results = {c: {n: [run.steady_tok_s for run in v] for n, v in d.items()} for c, d in runs.items()}
    whole = {c: {n: [run.tok_s for run in v] for n, v in d.items()} for c, d in runs.items()}
    summary = {}
    for c in concurrencies:
        medians = medians_and_ratios(results[c])
        summary[c] = {n: {"median_tok_s": round(m, 2), "ratio_to_off": round(r, 3)} for n, (m, r) in medians.items()}
        print(f"c{c}", {n: (round(m, 1), round(r, 3)) for n, (m, r) in medians.items()})
        for base in [b for b in ("off", args.versus) if b in results[c]]:  # off: where it was run
            paired = paired_ratios(results[c], base)
            for name, figures in paired.items():
                summary[c][name][f"paired_ratio_to_{base}"] = figures
            print(f"c{c} paired, ratio to {base}:", {n: f["median"] for n, f in paired.items()})
    record = {"dataset": args.dataset, "rounds": args.rounds, "max_tokens": args.max_tokens, "prompts": counts,
              "lockstep": args.lockstep,
              "draft_model": args.draft_model, "candidate": args.candidate,
              "datastore": args.datastore, "candidate_datastore": args.candidate_datastore, "tok_s": results, "summary": summary,
              "tok_s_whole_run": whole,
              "whole_run_ratio_to_off": {c: {n: round(r, 3) for n, (_, r) in medians_and_ratios(d).items()}
                                         for c, d in whole.items() if "off" in d},
              "drafter_stats": {n: drafter_stats(e) for n, e in engines.items()},
              "verification": {n: verification_stats(e) for n, e in engines.items()}}
    print(json.dumps(record["drafter_stats"]))
    print(json.dumps(record["verification"]))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
