"""infra/prefect.yaml declares the same deployments and schedules as ``make serve``."""

from __future__ import annotations

import importlib

import yaml

from flows.schedules import deployments
from tasks.config import INFRA_DIR, Settings


def test_prefect_yaml_matches_served_deployments():
    spec = yaml.safe_load((INFRA_DIR / "prefect.yaml").read_text())
    declared = {}
    for item in spec["deployments"]:
        module, name = item["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)
        crons = [s["cron"] for s in item.get("schedules", [])]
        assert all(s.get("timezone") == "UTC" for s in item.get("schedules", []))
        declared[(flow.name, item["name"])] = crons

    served = {}
    for deployment in deployments(Settings(), manifest="m.csv"):
        crons = [s.schedule.cron for s in deployment.schedules or []]
        served[(deployment.flow_name, deployment.name)] = crons
    assert declared == served
    assert served[("cohort", "nightly")] == ["0 2 * * *"]
    assert served[("backfill", "on-demand")] == []
