"""Peer definitions: commands, request model names, cached-venv markers (no installs)."""
from pathlib import Path

from bench import peers


def test_llama_cpp_command_uses_the_given_threads_and_alias():
    argv, env, model = peers.PEERS["llama-cpp-python"].command(Path("/v"), "/m/x.gguf", 1234, 3, "smol")
    assert argv[:3] == ["/v/bin/python", "-m", "llama_cpp.server"]
    assert argv[argv.index("--n_threads") + 1] == "3" and argv[argv.index("--port") + 1] == "1234"
    assert model == "smol" and env["OMP_NUM_THREADS"] == "3"


def test_transformers_serve_pins_the_gguf_and_requests_must_name_it():
    argv, _, model = peers.PEERS["transformers"].command(Path("/v"), "/m/x.gguf", 1234, 1, "smol")
    assert argv[:3] == ["/v/bin/transformers", "serve", "/m:x.gguf"]
    assert "--continuous-batching" in argv and model == "/m:x.gguf"


def test_llama_cpp_build_flags_avoid_the_native_build():
    env = peers.PEERS["llama-cpp-python"].build_env
    assert "-DGGML_NATIVE=OFF" in env["CMAKE_ARGS"]


def test_ban_tokens_body():
    assert peers.ban_tokens_body([0, 2]) == {"logit_bias": {"0": -100.0, "2": -100.0}}
    assert peers.ban_tokens_body([]) == {}


def test_ready_marker_must_match_the_install_spec(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "PEERS_DIR", tmp_path)
    spec = peers.PeerSpec("p", ("pkg==1",))
    assert not peers.is_ready(spec)
    spec.venv.mkdir()
    (spec.venv / ".ready").write_text(spec.install_fingerprint())
    assert peers.is_ready(spec)
    assert not peers.is_ready(peers.PeerSpec("p", ("pkg==2",)))
