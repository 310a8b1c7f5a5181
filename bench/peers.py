"""Peer servers to measure specserve against, each in its own cached venv.

The venvs live outside the repository (~/.cache/specserve-bench/peers/NAME)
and are built on first use; they are never part of CI. A `.ready` marker
holding the install specification makes later runs reuse them.

- llama-cpp-python[server] 0.3.36 serves the GGUF as stored (Q4_1). It is
  built from source (about 11 minutes) with explicit CPU flags: the native
  build uses AMX instructions that this VM advertises but cannot execute
  (SIGILL on the first decode).
- transformers serve --continuous-batching serves the same weights: its GGUF
  loading path fails in 5.24 (the GGUF-derived config has no
  `architectures`), so the GGUF is dequantized once to a float32 HF
  directory (cached under ~/.cache/specserve-bench/models/), which is what
  specserve computes with too.

Neither has `ignore_eos`, so to get full-length answers the benchmark bans
the end-of-turn tokens through `logit_bias` (both honour it).

    python -m bench.peers setup llama-cpp-python   # build the venv now
    python -m bench.peers status
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from bench.datasets import CACHE_DIR
from bench.servers import ServerProcess, free_port

PEERS_DIR = CACHE_DIR / "peers"

# The only flags that run here: see facts.md ("Peers, same model").
LLAMA_CPP_CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON "
                        "-DGGML_F16C=ON -DGGML_AVX512=ON")


@dataclass(frozen=True)
class PeerSpec:
    """How to install a peer and how to start its server on a model."""

    name: str
    packages: tuple[str, ...]
    build_env: dict = field(default_factory=dict)
    ready_path: str = "/v1/models"
    ready_timeout: float = 600.0
    # (venv, model path, port, threads, served name) -> argv, extra env, the
    # `model` requests must name
    command: Callable[[Path, str, int, int, str], tuple[list[str], dict, str]] | None = None
    # (spec, model path) -> the path this peer serves (e.g. a converted copy)
    prepare_model: Callable[["PeerSpec", str], str] | None = None

    @property
    def venv(self) -> Path:
        return PEERS_DIR / self.name

    def install_fingerprint(self) -> str:
        return json.dumps({"packages": self.packages, "env": self.build_env}, sort_keys=True)


def _thread_env(threads: int) -> dict:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _llama_cpp_command(venv: Path, model: str, port: int, threads: int, served: str):
    argv = [str(venv / "bin" / "python"), "-m", "llama_cpp.server", "--model", model,
            "--model_alias", served, "--host", "127.0.0.1", "--port", str(port),
            "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "4096",
            # By default a new request interrupts the one streaming: queue instead.
            "--interrupt_requests", "False"]
    return argv, _thread_env(threads), served


def _transformers_command(venv: Path, model: str, port: int, threads: int, served: str):
    # A GGUF is named "<dir>:<file>.gguf"; its config and tokenizer come from the file.
    model_id = f"{Path(model).parent}:{Path(model).name}" if model.endswith(".gguf") else model
    argv = [str(venv / "bin" / "transformers"), "serve", model_id, "--continuous-batching",
            "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32",
            "--log-level", "warning"]
    # A pinned server answers 400 unless requests name exactly the pinned model.
    return argv, _thread_env(threads), model_id


MODELS_DIR = CACHE_DIR / "models"

# Runs in the transformers peer's venv. The two fix-ups are what
# save_pretrained needs after loading from a GGUF (see facts.md).
_GGUF_TO_HF = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, name, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out)
AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
"""


def gguf_as_hf_dir(spec: PeerSpec, model: str) -> str:
    """A float32 HF directory with the GGUF's weights, converted once and cached."""
    if not model.endswith(".gguf"):
        return model
    out = MODELS_DIR / (Path(model).stem + "-f32")
    if (out / ".done").is_file():
        return str(out)
    out.mkdir(parents=True, exist_ok=True)
    argv = [str(spec.venv / "bin" / "python"), "-c", _GGUF_TO_HF, str(Path(model).parent), Path(model).name,
            str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **_thread_env(1)})
    if done.returncode != 0:
        raise RuntimeError(f"converting {model} for {spec.name} failed:\n{done.stderr[-3000:]}")
    (out / ".done").write_text(model)
    return str(out)


PEERS: dict[str, PeerSpec] = {
    "llama-cpp-python": PeerSpec(
        "llama-cpp-python", ("llama-cpp-python[server]==0.3.36",),
        build_env={"CMAKE_ARGS": LLAMA_CPP_CMAKE_ARGS, "FORCE_CMAKE": "1"},
        command=_llama_cpp_command),
    "transformers": PeerSpec(
        "transformers", ("torch==2.13.0", "transformers[serving]==5.24.0", "gguf", "accelerate"),
        command=_transformers_command, prepare_model=gguf_as_hf_dir),
}


# ------------------------------------------------------------ venvs


def is_ready(spec: PeerSpec) -> bool:
    marker = spec.venv / ".ready"
    return marker.is_file() and marker.read_text() == spec.install_fingerprint()


def ensure_peer(spec: PeerSpec, log: Callable[[str], None] = print) -> Path:
    """Create and fill the peer's venv unless a matching one is cached."""
    spec.venv.parent.mkdir(parents=True, exist_ok=True)
    with open(spec.venv.parent / f".{spec.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second caller waits for the first build
        if is_ready(spec):
            return spec.venv
        _build_venv(spec, log)
    return spec.venv


def _build_venv(spec: PeerSpec, log: Callable[[str], None]) -> None:
    log_path = spec.venv.parent / f"{spec.name}-install.log"
    log(f"[{spec.name}] installing {' '.join(spec.packages)} into {spec.venv} (log: {log_path})")
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(spec.venv)], check=True)
    pip = [str(spec.venv / "bin" / "python"), "-m", "pip", "install", "--no-input",
           "--disable-pip-version-check", *spec.packages]
    with open(log_path, "wb") as out:
        done = subprocess.run(pip, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, **spec.build_env})
    if done.returncode != 0:
        tail = log_path.read_text("utf-8", "replace").splitlines()[-30:]
        raise RuntimeError(f"[{spec.name}] pip install failed:\n" + "\n".join(tail))
    (spec.venv / ".ready").write_text(spec.install_fingerprint())
    log(f"[{spec.name}] ready after {time.monotonic() - t0:.0f} s")


# ------------------------------------------------------------ servers


def peer_server(spec: PeerSpec, model: str, log_dir: Path, threads: int,
                served_name: str) -> tuple[ServerProcess, str]:
    """A ServerProcess for the peer (its venv must be ready), and the model name to request."""
    port = free_port()
    if spec.prepare_model is not None:
        model = spec.prepare_model(spec, model)
    argv, env, request_model = spec.command(spec.venv, model, port, threads, served_name)
    server = ServerProcess(spec.name, argv, port, Path(log_dir) / f"{spec.name}.log",
                           ready_path=spec.ready_path, ready_timeout=spec.ready_timeout, env=env)
    return server, request_model


def ban_tokens_body(token_ids: Sequence[int]) -> dict:
    """`logit_bias` that keeps these tokens from being sampled (ignore_eos stand-in)."""
    return {"logit_bias": {str(t): -100.0 for t in token_ids}} if token_ids else {}


# ------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description="Set up peer servers' venvs")
    sub = p.add_subparsers(dest="action", required=True)
    setup = sub.add_parser("setup", help="build the venvs now")
    setup.add_argument("names", nargs="*", default=list(PEERS), help=f"any of {list(PEERS)}")
    sub.add_parser("status", help="which venvs are ready")
    args = p.parse_args(argv)
    if args.action == "status":
        for spec in PEERS.values():
            print(f"{spec.name}: {'ready' if is_ready(spec) else 'not built'} ({spec.venv})")
        return 0
    for name in args.names:
        ensure_peer(PEERS[name])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
