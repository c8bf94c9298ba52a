"""The autoscaling examples parse, and name what the code really uses: KEDA the Redis lists that
hold the default model's messages of every lane and priority, the HPA and its adapter rules the
gauges the API exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

import api.app.metrics  # noqa: F401  (registers the API's metrics)
from textgen_core.aging import lane_lists
from textgen_core.keys import LANES, Keys
from textgen_core.settings import DEFAULT_MODEL_ID, Settings

DEFAULT_PREFIX = Settings.model_fields["key_prefix"].default  # the examples name the default prefix
DOCS = Path(__file__).resolve().parents[2] / "docs" / "autoscaling"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DOCS / name).read_text()) if d]


def test_keda_scales_on_every_list_of_the_default_models_queues() -> None:
    (scaled,) = _docs("keda-scaledobject.yaml")
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    keys = Keys(DEFAULT_PREFIX)
    wanted = [name for lane in LANES for name in lane_lists(keys, DEFAULT_MODEL_ID, lane)]
    assert [t["metadata"]["listName"] for t in triggers] == wanted
    assert all(int(t["metadata"]["listLength"]) > 0 for t in triggers)
    assert scaled["spec"]["scaleTargetRef"]["name"]


def test_the_hpa_and_its_adapter_rules_use_gauges_the_api_exports() -> None:
    adapter, hpa = _docs("hpa-prometheus.yaml")
    assert (hpa["apiVersion"], hpa["kind"]) == ("autoscaling/v2", "HorizontalPodAutoscaler")
    exported = {family.name for family in REGISTRY.collect()}
    used = {m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert used == {"textgen_queue_priority_depth", "textgen_queue_oldest_age_seconds"} and used <= exported
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["externalRules"]
    assert {r["name"]["as"] for r in rules} == used
    queue = Keys(DEFAULT_PREFIX).queue(DEFAULT_MODEL_ID, "interactive")
    assert {m["external"]["metric"]["selector"]["matchLabels"]["queue"] for m in hpa["spec"]["metrics"]} == {queue}
