"""Structured outputs (response_format json_schema) with and without
speculation, in one run on one server, over HTTP only.

Each prompt is sent twice, greedy, alternating: once with `"speculative":
false` (this server's per-request opt-out: plain constrained decoding) and
once with speculation. The table gives output tokens/s of each mode, the
share of outputs that parse and validate, whether the two modes produced
the same text (they must: speculation is lossless), and from /metrics how
many drafts were verified, accepted, and cut before verification because
the grammar forbade them.

    python -m bench.structured                       # starts `specserve serve` (default model)
    python -m bench.structured --url http://127.0.0.1:8000 --num-prompts 4
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Sequence

import httpx

from bench.servers import specserve_server

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "city", "skills"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"},
                         "skills": {"type": "array", "items": {"type": "string"}, "maxItems": 3}}}
PEOPLE = [("Ada Lovelace", 36, "London", ["mathematics", "poetry"]),
          ("Alan Turing", 41, "Manchester", ["cryptanalysis", "logic", "running"]),
          ("Grace Hopper", 85, "Arlington", ["compilers", "COBOL"]),
          ("Linus Torvalds", 54, "Portland", ["kernels", "git"]),
          ("Margaret Hamilton", 88, "Boston", ["flight software"]),
          ("Donald Knuth", 86, "Stanford", ["algorithms", "typesetting", "organ"])]
METRICS = {"cut": "specserve:spec_grammar_cut_draft_tokens_total",
           "drafts": "specserve:spec_decode_num_draft_tokens_total",
           "accepted": "specserve:spec_decode_num_accepted_tokens_total"}


def prompt_for(person: tuple) -> str:
    name, age, city, skills = person
    return (f"Here is a record: {name} is {age} years old, lives in {city} and is good at "
            f"{', '.join(skills)}. Return it as JSON with keys name, age, city and skills.")


def metrics(client: httpx.Client) -> dict[str, float]:
    values = {}
    for line in client.get("/metrics").text.splitlines():
        for key, name in METRICS.items():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                values[key] = values.get(key, 0.0) + float(line.split()[-1])
    return values


def ask(client: httpx.Client, prompt: str, speculative: bool, max_tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": max_tokens,
            "speculative": speculative,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "record", "schema": SCHEMA, "strict": True}}}
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    data = response.json()
    return {"seconds": time.perf_counter() - started, "text": data["choices"][0]["message"]["content"],
            "tokens": data["usage"]["completion_tokens"], "finish": data["choices"][0]["finish_reason"]}


def valid(text: str) -> bool:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return (isinstance(value, dict) and set(value) == set(SCHEMA["required"]) and isinstance(value["age"], int)
            and isinstance(value["skills"], list) and all(isinstance(s, str) for s in value["skills"]))


def run(url: str, num_prompts: int, max_tokens: int) -> dict:
    prompts = [prompt_for(PEOPLE[i % len(PEOPLE)]) for i in range(num_prompts)]
    results: dict[str, list[dict]] = {"off": [], "on": []}
    with httpx.Client(base_url=url, timeout=600) as client:
        ask(client, prompts[0], False, 8)  # warm-up: the grammar compiles once, caches warm
        before = metrics(client)
        for prompt in prompts:
            results["off"].append(ask(client, prompt, False, max_tokens))
            results["on"].append(ask(client, prompt, True, max_tokens))
        after = metrics(client)
    return {"results": results, "metrics": {k: after.get(k, 0.0) - before.get(k, 0.0) for k in METRICS}}


def table(report: dict) -> str:
    rows = ["| mode | requests | output tokens | seconds | tok/s | valid JSON |", "|---|---|---|---|---|---|"]
    for mode, label in (("off", "speculation off"), ("on", "speculation on")):
        runs = report["results"][mode]
        tokens, seconds = sum(r["tokens"] for r in runs), sum(r["seconds"] for r in runs)
        ok = sum(valid(r["text"]) for r in runs)
        rows.append(f"| {label} | {len(runs)} | {tokens} | {seconds:.1f} | {tokens / seconds:.2f} | {ok}/{len(runs)} |")
    same = sum(a["text"] == b["text"] for a, b in zip(report["results"]["off"], report["results"]["on"]))
    m = report["metrics"]
    rows.append(f"\nidentical outputs: {same}/{len(report['results']['on'])}; drafts verified "
                f"{m['drafts']:.0f}, accepted {m['accepted']:.0f}, cut by the grammar {m['cut']:.0f}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.structured", description=__doc__.splitlines()[0])
    p.add_argument("--url", default=None, help="a running server (default: start one)")
    p.add_argument("--model", default=None, help="default: the server's default model")
    p.add_argument("--flags", default="--speculative-method ngram", help="extra `specserve serve` flags")
    p.add_argument("--num-prompts", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write the report as JSON here")
    args = p.parse_args(argv)
    if args.url:
        report = run(args.url, args.num_prompts, args.max_tokens)
    else:
        with specserve_server(args.model, Path(tempfile.mkdtemp(prefix="bench-structured-")),
                              args.flags.split(), threads=args.threads) as server:
            report = run(server.base_url, args.num_prompts, args.max_tokens)
    print(table(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report | {"args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
