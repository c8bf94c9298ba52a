"""The deployment files are accepted by the tools that run them: promtool for the Prometheus
config and alert rules, docker-compose for the compose file; dashboards and alerts only use
metrics that textgen exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import api.app.metrics  # noqa: F401  (registers the API's metrics)
import textgen_core.metrics  # noqa: F401  (registers the workers' metrics)
import workers.webhook_metrics  # noqa: F401  (registers the webhook worker's metrics)
from tests.binaries import require
from workers.metrics import RUNTIME_METRICS

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
SECRETS = {"TEXTGEN_API_KEYS": "k-1", "TEXTGEN_FLOWER_BASIC_AUTH": "ops:s3cret", "GRAFANA_ADMIN_PASSWORD": "pw"}


def run(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def test_promtool_accepts_the_prometheus_config_and_the_alert_rules() -> None:
    promtool = require("promtool", "prometheus")
    config = run(promtool, "check", "config", str(MONITORING / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = run(promtool, "check", "rules", str(MONITORING / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout


def test_promtool_alerts_fire_for_a_model_without_workers_and_a_growing_queue() -> None:
    promtool = require("promtool", "prometheus")
    result = run(promtool, "test", "rules", str(MONITORING / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def _env_file(tmp_path: Path, values: dict[str, str]) -> Path:
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={values[name]}" if name in values else line)
    path = tmp_path / "env"
    path.write_text("\n".join(lines) + "\n")
    return path


def _compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    compose = require("docker-compose", "docker-compose")
    # A clean environment: only the env file decides, as on a fresh deployment machine.
    return run(compose, "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"), "config",
               env={"PATH": "/usr/bin:/bin"})


def test_compose_file_validates_with_the_example_env_filled_in(tmp_path: Path) -> None:
    result = _compose_config(_env_file(tmp_path, SECRETS))
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"redis", "api", "worker", "webhooks", "flower", "celery-exporter", "prometheus",
                             "grafana"}
    assert all("healthcheck" in s for s in services.values())
    assert services["api"]["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert {"--appendonly", "noeviction"} <= set(services["redis"]["command"])
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["device_ids"] == ["0"]
    assert services["api"]["environment"]["TEXTGEN_API_KEYS"] == SECRETS["TEXTGEN_API_KEYS"]
    # Without a webhook worker no webhook is ever delivered; Prometheus scrapes its metrics port.
    webhooks = services["webhooks"]
    assert webhooks["command"] == ["textgen", "webhook-worker"]
    port = webhooks["environment"]["TEXTGEN_WEBHOOK_METRICS_PORT"]
    assert webhooks["environment"]["TEXTGEN_WORKER_METRICS_HOST"] == "0.0.0.0"
    scraped = [t for job in yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"]
               for c in job["static_configs"] for t in c["targets"]]
    assert f"webhooks:{port}" in scraped and "worker:9101" in scraped


def test_compose_refuses_to_start_without_the_required_secrets(tmp_path: Path) -> None:
    result = _compose_config(_env_file(tmp_path, {}))
    assert result.returncode != 0
    assert "set TEXTGEN_API_KEYS in .env" in result.stderr


def _referenced_metrics(text: str) -> set[str]:
    names = set(re.findall(r"\btextgen_[a-z0-9_]+", text))
    return {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in names}


def test_dashboard_and_alerts_use_only_metrics_textgen_exports() -> None:
    exported = {family.name for family in REGISTRY.collect()} | set(RUNTIME_METRICS)
    dashboard = json.loads((MONITORING / "grafana/dashboards/textgen.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for source, text in (("dashboard", exprs), ("alerts", (MONITORING / "alerts.yml").read_text())):
        unknown = _referenced_metrics(text) - exported
        assert not unknown, f"{source} uses metrics nobody exports: {sorted(unknown)}"


# (workers/metrics.py yields its families from a collector at scrape time.)
METRIC_MODULES = ["api/app/metrics.py", "textgen_core/metrics.py", "workers/webhook_metrics.py"]


@pytest.mark.parametrize("path", METRIC_MODULES)
def test_every_metric_defined_is_recorded_somewhere(path: str) -> None:
    """A metric that nothing records passes the check above and leaves its panel and alert silent
    (a webhook-deliveries counter once did)."""
    defined = re.findall(r"^([A-Z][A-Z0-9_]+) = (?:Counter|Gauge|Histogram|Summary)\(", (ROOT / path).read_text(),
                         re.MULTILINE)
    assert defined
    sources = [p.read_text() for package in ("api", "workers", "textgen_core") for p in (ROOT / package).rglob("*.py")]
    unused = [name for name in defined
              if sum(len(re.findall(rf"\b{name}\b", text)) for text in sources) < 2]
    assert not unused, f"{path} defines metrics nothing records: {unused}"


@pytest.mark.parametrize("path", ["Dockerfile.api", "Dockerfile.worker"])
def test_images_run_as_a_non_root_user(path: str) -> None:
    lines = [line.split() for line in (ROOT / path).read_text().splitlines() if line.strip()]
    users = [words[1] for words in lines if words[0] == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_the_dashboard_shows_dead_letters_per_queue() -> None:
    dashboard = json.loads((MONITORING / "grafana/dashboards/textgen.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert any("textgen_dead_letters_total" in e and "by (queue" in e for e in exprs)
    assert any("textgen_jobs_retried_total" in e for e in exprs)
