"""`autoglm_worker_state` is a state set: per worker one series for each `WorkerState`, 1 for the state the
worker is in and 0 for the others, read from the pool when Prometheus scrapes."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from autoglm_rpc.pool.handle import WorkerState
from autoglm_rpc.telemetry.metrics import GatewayMetrics


def _worker(worker_id: int, state: WorkerState) -> SimpleNamespace:
    return SimpleNamespace(worker_id=worker_id, state=state, is_ready=state is WorkerState.READY, model=None)


def _scrape(metrics: GatewayMetrics) -> dict[str, dict[tuple[str, str], float]]:
    """family -> (worker, state or "") -> value, for the per-worker families."""
    families = text_string_to_metric_families(generate_latest(metrics.registry).decode())
    return {
        family.name: {(s.labels["worker"], s.labels.get("state", "")): s.value for s in family.samples}
        for family in families
        if family.samples and "worker" in family.samples[0].labels
    }


def test_each_worker_has_one_state_set_to_one() -> None:
    pool = SimpleNamespace(workers=(_worker(0, WorkerState.READY), _worker(1, WorkerState.RESTARTING)))
    metrics = GatewayMetrics("m")
    metrics.watch(pool)  # type: ignore[arg-type]
    scraped = _scrape(metrics)
    states = scraped["autoglm_worker_state"]
    assert {state for _, state in states} == {state.value for state in WorkerState}
    assert {key for key, value in states.items() if value == 1} == {("0", "ready"), ("1", "restarting")}
    assert sum(states.values()) == 2 and len(states) == 2 * len(WorkerState)
    assert scraped["autoglm_worker_up"] == {("0", ""): 1, ("1", ""): 0}

    pool.workers = (_worker(0, WorkerState.HUNG), pool.workers[1])  # read again at the next scrape
    assert {key for key, value in _scrape(metrics)["autoglm_worker_state"].items() if value == 1} == {
        ("0", "hung"),
        ("1", "restarting"),
    }
