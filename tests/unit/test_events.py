"""A training flow's announcement and the bridge's forwarded webhook are the same Prefect event."""
from __future__ import annotations

from typing import Any

import pytest

import onnx_stage.events as events
from deployments.bridge import model_version_created_event


def test_announcement_matches_the_bridge_event_but_for_the_delivery_id(monkeypatch: pytest.MonkeyPatch) -> None:
    emitted: list[dict[str, Any]] = []
    monkeypatch.setattr(events, "emit_event", lambda **kwargs: emitted.append(kwargs) or kwargs)

    events.announce_model_version("churn", 3, run_id="run-1", source="models:/m-1")

    forwarded = model_version_created_event({"name": "churn", "version": 3, "run_id": "run-1",
                                             "source": "models:/m-1"}, delivery_id="d-1")
    assert emitted == [{"event": forwarded.name, "resource": forwarded.resource,
                        "payload": {**forwarded.payload, "delivery_id": None}}]
    assert forwarded.name == "mlflow.model_version.created"


def test_announcement_that_prefect_cannot_emit_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "emit_event", lambda **kwargs: None)

    with pytest.raises(events.EmissionFailed, match="PREFECT_API_URL"):
        events.announce_model_version("churn", "3")
