"""The deployment files, checked without running containers: they parse, they refer to each
other consistently, and the dashboard charts metrics that exist. `make image-test` and
`make stack-test` run them (tests/test_stack.py).
"""

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import errands.core.metrics  # noqa: F401 (registers every metric the dashboard may chart)
from errands.config import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ROLES = {"api-1", "api-2", "worker", "sink", "migrate"}


def compose(path: str = "compose.yaml") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / path).read_text())
    return loaded


def test_compose_runs_every_role_and_the_services_they_need() -> None:
    services = compose()["services"]

    assert set(services) >= {*ROLES, "lb", "postgres", "kafka", "prometheus", "grafana"}
    commands = {name: services[name]["command"] for name in ROLES}
    assert commands == {
        "api-1": ["api"],
        "api-2": ["api"],
        "worker": ["worker"],
        "sink": ["sink"],
        "migrate": ["migrate"],
    }
    for name in ROLES:
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / services[name]["build"]["context"] / "pyproject.toml").is_file()


def test_compose_references_resolve() -> None:
    document = compose()
    services = document["services"]
    for name, service in services.items():
        for needed in service.get("depends_on", []):
            assert needed in services, f"{name} depends on unknown {needed}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in document["volumes"], f"{name} mounts undeclared {source}"


@pytest.mark.parametrize("path", ["compose.yaml", "test/compose.yaml"])
def test_compose_sets_only_settings_that_exist(path: str) -> None:
    known = {f"ERRANDS_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose(path)["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("ERRANDS_"):
                assert variable in known, f"{name} sets unknown {variable}"


def test_the_stack_is_secure_by_default() -> None:
    services = compose()["services"]

    for name in ROLES:
        assert services[name]["environment"]["ERRANDS_API_KEYS_ENABLED"] == "true", name
        assert services[name]["read_only"] is True, name
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert "admin" not in services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert (
        "http-request deny deny_status 404 if { path /metrics }"
        in (DEPLOY / "haproxy.cfg").read_text()
    )


def test_the_test_override_changes_only_services_compose_defines() -> None:
    overridden = compose("test/compose.yaml")["services"]

    assert set(overridden) <= set(compose()["services"])
    assert all(service["network_mode"] == "host" for service in overridden.values())


def test_prometheus_scrapes_every_process_where_it_serves_metrics() -> None:
    services = compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }

    expected = {"api-1:8000", "api-2:8000", "lb:8405"}
    expected |= {
        f"{role}:{services[role]['environment']['ERRANDS_METRICS_PORT']}"
        for role in ("worker", "sink")
    }
    assert targets == expected


def test_the_load_balancer_routes_on_readiness_to_both_api_processes() -> None:
    config = (DEPLOY / "haproxy.cfg").read_text()

    assert "option httpchk GET /readyz" in config
    servers = re.findall(r'^\s*server (\S+) "\$\{\w+-(\S+):8000\}"', config, re.MULTILINE)
    assert servers == [("api-1", "api-1"), ("api-2", "api-2")]


def test_the_image_is_multi_stage_non_root_with_a_healthcheck() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()

    assert len(re.findall(r"^FROM ", dockerfile, re.MULTILINE)) == 2
    assert "--constraint constraints.txt" in dockerfile
    assert re.search(r"^USER errands$", dockerfile, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["errands"]' in dockerfile


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "errands.json").read_text())
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert expressions
    return {
        name
        for expression in expressions
        for name in re.findall(r"\b((?:errands|http|process)_[a-z_]+)\b", expression)
    }


def test_the_dashboard_charts_only_metrics_errands_exports() -> None:
    exported = {family.name for family in REGISTRY.collect()}
    charted = dashboard_metric_names()

    for name in charted:
        base = re.sub(r"_(bucket|count|sum|total)$", "", name)
        assert base in exported, name


def test_the_dashboard_covers_every_metric_the_operations_issue_lists() -> None:
    charted = dashboard_metric_names()

    assert charted >= {
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "http_requests_inprogress",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "errands_titles_fetched_total",
        "errands_timers_pending",
        "errands_delivery_lateness_seconds_bucket",
        "errands_conversion_queue_depth",
        "errands_conversion_duration_seconds_bucket",
        "errands_conversion_child_peak_rss_bytes_bucket",
        "errands_checks_total",
        "errands_sink_lag_messages",
    }


def test_grafana_provisions_the_datasource_and_the_dashboard_folder() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    providers = yaml.safe_load((provisioning / "dashboards" / "errands.yaml").read_text())
    mounts = compose()["services"]["grafana"]["volumes"]

    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    assert datasources["datasources"][0]["uid"] == "prometheus"
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_promtool_accepts_the_prometheus_config() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", "--syntax-only", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_accepts_its_config() -> None:
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
