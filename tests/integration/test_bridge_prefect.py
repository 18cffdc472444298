"""The bridge's default emitter against a real (temporary) Prefect server."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from prefect.events import Event

from deployments.bridge import WEBHOOK_PATH, create_app, emit_prefect_event, sign

SECRET = "integration-test-secret"


def deliver_model_version_created(delivery_id: str) -> httpx.Response:
    app = create_app(SECRET)
    body = json.dumps(
        {
            "entity": "model_version",
            "action": "created",
            "data": {"name": "churn", "version": "3", "source": "models:/m-1", "run_id": "r-1"},
        }
    ).encode()
    timestamp = int(time.time())
    headers = {
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": str(timestamp),
        "X-MLflow-Signature": sign(SECRET, delivery_id, timestamp, body),
    }

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
            return await client.post(WEBHOOK_PATH, content=body, headers=headers)

    return asyncio.run(send())


def test_default_emitter_emits_to_prefect(prefect: None) -> None:
    event = emit_prefect_event(
        event="mlflow.model_version.created",
        resource={"prefect.resource.id": "mlflow.model_version.churn.3"},
        payload={"name": "churn", "version": "3"},
    )
    response = deliver_model_version_created("d-integration")

    assert isinstance(event, Event)
    assert event.event == "mlflow.model_version.created"
    assert event.resource.id == "mlflow.model_version.churn.3"
    assert response.status_code == 202
    assert response.json() == {"status": "emitted", "event": "mlflow.model_version.created"}
