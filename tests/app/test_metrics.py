"""GET /metrics: Prometheus text that prometheus-client parses, and counters that move."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.core.config import settings
from app.models import loading
from tests.app.test_jobs import classification_csv, train, upload


def scrape(
    client: TestClient, **headers: str
) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}}."""
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_requests_are_counted_by_route_template(client: TestClient) -> None:
    before = scrape(client)
    for _ in range(3):
        assert client.get("/models/abc123").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    after = scrape(client)
    route = "/models/{model_id}"
    assert value(after, "regula_http_requests_total", method="GET", route=route, status="404") == (
        value(before, "regula_http_requests_total", method="GET", route=route, status="404") + 3
    )
    count = value(after, "regula_http_request_duration_seconds_count", method="GET", route=route)
    assert count >= 3
    routes = {dict(k).get("route") for k in after["regula_http_requests_total"]}
    assert "/models/abc123" not in routes and "<unmatched>" in routes


def test_static_files_are_counted_under_their_prefix(client: TestClient) -> None:
    # regression: the dashboard's assets were counted as "<unmatched>" with status 200
    before = scrape(client)
    assert client.get("/static/css/app.css").status_code == 200
    assert client.get("/static/js/main.js").status_code == 200
    after = scrape(client)
    key = {"method": "GET", "route": "/static/{path}", "status": "200"}
    assert value(after, "regula_http_requests_total", **key) == (
        value(before, "regula_http_requests_total", **key) + 2
    )


def test_jobs_epochs_and_the_model_cache_move(client: TestClient) -> None:
    loading.cache.clear()
    before = scrape(client)
    dataset = upload(client, classification_csv(120))
    job = train(client, dataset["id"], epochs=4)
    rows = [{"x1": 0.1, "x2": -0.2, "noise": 0.3, "color": "red"}]
    for _ in range(3):
        r = client.post(f"/models/{job['model_id']}/predict", json={"rows": rows})
        assert r.status_code == 200, r.text
    after = scrape(client)
    assert value(after, "regula_jobs", status="succeeded") == (
        value(before, "regula_jobs", status="succeeded") + 1
    )
    assert value(after, "regula_jobs_queue_depth") == 0
    assert (
        value(after, "regula_epochs_trained_total")
        == value(before, "regula_epochs_trained_total") + 4
    )
    assert value(after, "regula_workers") == 1
    assert value(after, "regula_model_cache_entries") == 1
    assert value(after, "regula_model_cache_bytes") == loading.cache.nbytes > 0
    assert (
        value(after, "regula_model_cache_misses_total")
        >= value(before, "regula_model_cache_misses_total") + 1
    )
    assert (
        value(after, "regula_model_cache_hits_total")
        >= value(before, "regula_model_cache_hits_total") + 2
    )
    route = "/models/{model_id}/predict"
    assert value(after, "regula_http_requests_total", method="POST", route=route, status="200") >= 3


def test_a_metrics_token_guards_the_scrape(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "metrics_token", "s3cret-token-for-prometheus")
    r = client.get("/metrics")
    assert r.status_code == 401 and r.json()["detail"][0]["type"] == "invalid_metrics_token"
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    scrape(client, Authorization="Bearer s3cret-token-for-prometheus")


def test_no_token_means_no_key_even_when_auth_is_required(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "auth_required", True)
    assert "regula_jobs" in scrape(client)
