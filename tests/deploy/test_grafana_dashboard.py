"""deploy/grafana/autoglm-rpc.json against a real server: every series its queries name (panel targets and
template variables) is one a gateway with a worker exports at /metrics after gRPC and HTTP traffic, `rate` and
`increase` are taken of counters only, and the JSON has what Grafana's import needs (a Prometheus `datasource`
variable that every panel and target uses, `job` / `instance` variables, unique panel ids, a title on every panel,
panels that do not overlap)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ServerThread, server_settings

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "autoglm-rpc.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What the dashboard is for (issue 20): at least these series, so a panel cannot go missing unnoticed.
REQUIRED = {
    "autoglm_output_tokens_total",  # throughput
    "autoglm_requests_total",  # requests and errors by status
    "gen_ai_server_time_to_first_token_seconds_bucket",
    "gen_ai_server_time_per_output_token_seconds_bucket",
    "gen_ai_server_request_duration_seconds_bucket",
    "autoglm_queue_depth",
    "autoglm_running_requests",
    "autoglm_kv_cache_blocks_used",
    "autoglm_kv_cache_usage_ratio",
    "autoglm_prefix_cache_hit_tokens_total",
    "autoglm_kv_cache_preemptions_total",
    "autoglm_worker_up",
    "autoglm_worker_state",
    "autoglm_worker_restarts_total",
}

# PromQL pieces that are not series names, removed before the names are read. Strings first, so that a brace or
# bracket inside a label value cannot confuse the others.
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NUMBERS = re.compile(r"(?<![\w:])\d[\w.]*")
_NAME = re.compile(r"[a-zA-Z_:][\w:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
_KEYWORDS |= {"offset", "inf", "nan"}
_RATES = re.compile(r"\b(?:rate|irate|increase)\s*\(\s*([a-zA-Z_:][\w:]*)")
_LABEL_VALUES = re.compile(r"label_values\((.*),\s*\w+\s*\)", re.DOTALL)


def series_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects: every name that is not a function (followed by `(`), a
    keyword, a label (inside `{...}` or a `by (...)` clause), a number or duration, or a Grafana variable."""
    text = _STRINGS.sub('""', expr)
    for pattern in (_VARIABLES, _MATCHERS, _RANGES, _GROUPING, _NUMBERS):
        text = pattern.sub(" ", text)
    return {
        match.group()
        for match in _NAME.finditer(text)
        if match.group() not in _KEYWORDS and not text[match.end() :].lstrip().startswith("(")
    }


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, and the panels of collapsed rows (which Grafana nests inside the row)."""
    found = []
    for panel in dashboard["panels"]:
        found += [panel, *panel.get("panels", [])]
    return found


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable (`label_values(<selector>, label)`)."""
    panels = _panels(dashboard)
    queries = [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"] if isinstance(variable["query"], str) else variable["query"]["query"]
            selector = _LABEL_VALUES.fullmatch(query)
            queries.append((f"variable {variable['name']}", selector.group(1) if selector else query))
    return queries


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def exported(glm_checkpoint: Path) -> Iterator[dict[str, str]]:
    """Each sample name at /metrics (`_total`, `_bucket`, ... included) -> its family's type, after one gRPC and
    one HTTP generation."""
    settings = server_settings(glm_checkpoint, workers=1, metrics_port=0, model_id="tiny-glm")
    server = ServerThread(settings).start()
    try:
        with server.client() as client:
            client.generate("Hello", max_new_tokens=3, timeout=60)
        assert server.app is not None
        reply = httpx.post(
            f"http://127.0.0.1:{server.app.http.port}/v1/completions",
            json={"prompt": "Hello", "max_tokens": 3},
            timeout=60,
        )
        assert reply.status_code == 200
        port = server.app.telemetry.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.stop()
    families = list(text_string_to_metric_families(text))
    yield {sample.name: family.type for family in families for sample in family.samples}


def test_series_names_reads_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(ttft_seconds_bucket{job=~"$job", code!~"OK|2.."}[5m])))'
        " / on (job) group_left (model) sum without (worker) (up_ratio offset 1h) > bool 1e3"
        " and topk(${k}, rate(x:y_total[$__rate_interval]))"
    )
    assert series_names(expr) == {"ttft_seconds_bucket", "up_ratio", "x:y_total"}
    assert series_names('count(autoglm_worker_upp{state="ready"})') == {"autoglm_worker_upp"}


def test_every_series_the_dashboard_queries_is_exported(dashboard: dict[str, Any], exported: dict[str, str]):
    queries = _queries(dashboard)
    used = {name for _, expr in queries for name in series_names(expr)}
    missing = sorted(f"{where}: {name}" for where, expr in queries for name in series_names(expr) - set(exported))
    assert not missing, f"not exported at /metrics: {missing}"
    assert not REQUIRED - used, f"no panel shows {sorted(REQUIRED - used)}"


def test_rates_are_of_counters(dashboard: dict[str, Any], exported: dict[str, str]) -> None:
    """`rate` of a gauge is a plausible line that means nothing; only counters and histograms' series qualify."""
    rated = {(where, name) for where, expr in _queries(dashboard) for name in _RATES.findall(expr)}
    assert rated
    wrong = sorted((where, name, exported.get(name)) for where, name in rated)
    assert [entry for entry in wrong if entry[2] not in ("counter", "histogram")] == []


def test_quantiles_are_of_histogram_buckets(dashboard: dict[str, Any], exported: dict[str, str]) -> None:
    quantile_exprs = [expr for _, expr in _queries(dashboard) if "histogram_quantile" in expr]
    assert len(quantile_exprs) >= 9  # p50, p90 and p99 of TTFT, time per output token and request duration
    for expr in quantile_exprs:
        (name,) = series_names(expr)
        assert name.endswith("_bucket") and exported[name] == "histogram", expr


def test_dashboard_has_what_an_import_needs(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "autoglm-rpc" and dashboard["title"]
    assert dashboard["schemaVersion"] >= 39 and dashboard["id"] is None
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query" and variables[name]["datasource"] == DATASOURCE
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert all(panel.get("title") for panel in panels)
    for panel in (panel for panel in panels if panel["type"] != "row"):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"] and all(target["datasource"] == DATASOURCE for target in panel["targets"])
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"]), panel["title"]
    cells = [(x, y) for panel in panels for x, y in _cells(panel["gridPos"])]
    assert len(cells) == len(set(cells)), "panels overlap"


def _cells(grid: dict[str, int]) -> Iterator[tuple[int, int]]:
    assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
    for x in range(grid["x"], grid["x"] + grid["w"]):
        for y in range(grid["y"], grid["y"] + grid["h"]):
            yield x, y
