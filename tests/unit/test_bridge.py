"""Receiver logic of the MLflow webhook -> Prefect event bridge, with a recording emitter."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature
from starlette.applications import Starlette

from deployments.bridge import (
    ENV_SECRET,
    TWIN_TAG,
    WEBHOOK_PATH,
    DeliveryLedger,
    create_app,
    load_settings,
    main,
    sign,
)

SECRET = "unit-test-secret"
NOW = 1_750_000_000


@dataclass
class RecordingEmitter:
    calls: list[dict[str, Any]] = field(default_factory=list)
    failures_left: int = 0

    def __call__(self, *, event: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("Prefect API unreachable")
        self.calls.append({"event": event, "resource": resource, "payload": payload})


@dataclass
class FakeClock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def emitter() -> RecordingEmitter:
    return RecordingEmitter()


@pytest.fixture
def app(emitter: RecordingEmitter) -> Starlette:
    return create_app(SECRET, emit=emitter, clock=FakeClock())


def model_version_created(**data_overrides: Any) -> bytes:
    data = {
        "name": "churn",
        "version": "3",
        "source": "models:/m-abc123",
        "run_id": "run-123",
        "tags": {"team": "ml"},
        "description": None,
        **data_overrides,
    }
    return json_body({"entity": "model_version", "action": "created", "data": data})


def json_body(message: dict[str, Any]) -> bytes:
    message = {"timestamp": "2025-06-15T15:06:40+00:00", **message}
    return json.dumps(message).encode()


def signed_headers(
    body: bytes,
    *,
    delivery_id: str | None = None,
    timestamp: int = NOW,
    secret: str = SECRET,
) -> dict[str, str]:
    delivery_id = delivery_id or str(uuid.uuid4())
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": str(timestamp),
        "X-MLflow-Signature": sign(secret, delivery_id, timestamp, body),
    }


def post(app: Starlette, content: bytes | AsyncIterator[bytes], headers: dict[str, str]) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
            return await client.post(WEBHOOK_PATH, content=content, headers=headers)

    return asyncio.run(send())


def deliver(app: Starlette, body: bytes, **signing: Any) -> httpx.Response:
    return post(app, body, signed_headers(body, **signing))


def test_valid_model_version_created_emits_once(app: Starlette, emitter: RecordingEmitter) -> None:
    response = deliver(app, model_version_created(), delivery_id="d-1")

    assert response.status_code == 202
    assert response.json() == {"status": "emitted", "event": "mlflow.model_version.created"}
    assert emitter.calls == [
        {
            "event": "mlflow.model_version.created",
            "resource": {
                "prefect.resource.id": "mlflow.model_version.churn.3",
                "mlflow.model.name": "churn",
                "mlflow.model.version": "3",
            },
            "payload": {
                "name": "churn",
                "version": "3",
                "run_id": "run-123",
                "source": "models:/m-abc123",
                "delivery_id": "d-1",
            },
        }
    ]


def test_integer_version_is_forwarded_as_string(app: Starlette, emitter: RecordingEmitter) -> None:
    response = deliver(app, model_version_created(version=7))

    assert response.status_code == 202
    assert emitter.calls[0]["payload"]["version"] == "7"
    assert emitter.calls[0]["resource"]["mlflow.model.version"] == "7"


def test_alias_created_emits_alias_event(app: Starlette, emitter: RecordingEmitter) -> None:
    body = json_body(
        {
            "entity": "model_version_alias",
            "action": "created",
            "data": {"name": "churn", "alias": "champion", "version": "3"},
        }
    )

    response = deliver(app, body, delivery_id="d-alias")

    assert response.status_code == 202
    assert response.json() == {"status": "emitted", "event": "mlflow.model_version_alias.created"}
    assert emitter.calls == [
        {
            "event": "mlflow.model_version_alias.created",
            "resource": {
                "prefect.resource.id": "mlflow.model_version.churn.3",
                "mlflow.model.name": "churn",
                "mlflow.model.version": "3",
                "mlflow.model.alias": "champion",
            },
            "payload": {
                "name": "churn",
                "alias": "champion",
                "version": "3",
                "delivery_id": "d-alias",
            },
        }
    ]


def test_wrong_secret_is_rejected(app: Starlette, emitter: RecordingEmitter) -> None:
    response = deliver(app, model_version_created(), secret="not-the-secret")

    assert response.status_code == 401
    assert emitter.calls == []


def test_tampered_body_is_rejected(app: Starlette, emitter: RecordingEmitter) -> None:
    headers = signed_headers(model_version_created(version="3"))

    response = post(app, model_version_created(version="4"), headers)

    assert response.status_code == 401
    assert emitter.calls == []


@pytest.mark.parametrize(
    ("offset_seconds", "expected_status", "emits"),
    [
        pytest.param(-301, 401, False, id="too-old"),
        pytest.param(301, 401, False, id="too-far-in-future"),
        pytest.param(-300, 202, True, id="oldest-accepted"),
        pytest.param(300, 202, True, id="latest-accepted"),
    ],
)
def test_timestamp_window(
    app: Starlette,
    emitter: RecordingEmitter,
    offset_seconds: int,
    expected_status: int,
    emits: bool,
) -> None:
    response = deliver(app, model_version_created(), timestamp=NOW + offset_seconds)

    assert response.status_code == expected_status
    assert len(emitter.calls) == int(emits)


def test_non_numeric_timestamp_is_rejected(app: Starlette, emitter: RecordingEmitter) -> None:
    body = model_version_created()
    headers = {**signed_headers(body), "X-MLflow-Timestamp": "yesterday"}

    response = post(app, body, headers)

    assert response.status_code == 401
    assert emitter.calls == []


def test_replayed_delivery_is_rejected(app: Starlette, emitter: RecordingEmitter) -> None:
    body = model_version_created()
    headers = signed_headers(body)

    first = post(app, body, headers)
    replay = post(app, body, headers)

    assert first.status_code == 202
    assert replay.status_code == 409
    assert len(emitter.calls) == 1


async def chunked(body: bytes, chunk_size: int = 16) -> AsyncIterator[bytes]:
    for start in range(0, len(body), chunk_size):
        yield body[start : start + chunk_size]


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_is_rejected(emitter: RecordingEmitter, streamed: bool) -> None:
    app = create_app(SECRET, emit=emitter, clock=FakeClock(), max_body_bytes=64)
    body = model_version_created(description="x" * 200)
    headers = signed_headers(body)

    response = post(app, chunked(body) if streamed else body, headers)

    assert response.status_code == 413
    assert emitter.calls == []


def test_body_at_the_cap_is_accepted(emitter: RecordingEmitter) -> None:
    body = model_version_created()
    app = create_app(SECRET, emit=emitter, clock=FakeClock(), max_body_bytes=len(body))

    response = post(app, chunked(body), signed_headers(body))

    assert response.status_code == 202
    assert len(emitter.calls) == 1


@pytest.mark.parametrize("body", [b"not json {", b'["a", "list"]'], ids=["not-json", "not-object"])
def test_signed_non_json_object_body_is_rejected(
    app: Starlette, emitter: RecordingEmitter, body: bytes
) -> None:
    response = deliver(app, body)

    assert response.status_code == 400
    assert emitter.calls == []


def test_model_version_without_name_is_rejected(app: Starlette, emitter: RecordingEmitter) -> None:
    response = deliver(app, model_version_created(name=None))

    assert response.status_code == 400
    assert emitter.calls == []


@pytest.mark.parametrize(
    ("entity", "action"),
    [("model_version", "deleted"), ("registered_model", "created"), ("prompt", "created")],
)
def test_signed_unknown_event_is_ignored(
    app: Starlette, emitter: RecordingEmitter, entity: str, action: str
) -> None:
    body = json_body({"entity": entity, "action": action, "data": {"name": "churn"}})

    response = deliver(app, body)

    assert response.status_code == 202
    assert response.json()["status"] == "ignored"
    assert f"{entity}.{action}" in response.json()["reason"]
    assert emitter.calls == []


def test_onnx_twin_version_is_ignored(app: Starlette, emitter: RecordingEmitter) -> None:
    body = model_version_created(version="4", tags={TWIN_TAG: "churn/3", "format": "onnx"})

    response = deliver(app, body)

    assert response.status_code == 202
    assert response.json()["status"] == "ignored"
    assert TWIN_TAG in response.json()["reason"]
    assert emitter.calls == []


@pytest.mark.parametrize(
    "missing", ["X-MLflow-Delivery-Id", "X-MLflow-Timestamp", "X-MLflow-Signature"]
)
def test_missing_header_is_rejected(
    app: Starlette, emitter: RecordingEmitter, missing: str
) -> None:
    body = model_version_created()
    headers = signed_headers(body)
    del headers[missing]

    response = post(app, body, headers)

    assert response.status_code == 401
    assert missing in response.json()["reason"]
    assert emitter.calls == []


def test_failed_emission_answers_503_and_the_retry_succeeds(emitter: RecordingEmitter) -> None:
    emitter.failures_left = 1
    app = create_app(SECRET, emit=emitter, clock=FakeClock())
    body = model_version_created()
    headers = signed_headers(body)

    failed = post(app, body, headers)
    retried = post(app, body, headers)

    assert failed.status_code == 503
    assert retried.status_code == 202
    assert len(emitter.calls) == 1


def test_log_line_names_delivery_but_not_secret_or_signature(
    app: Starlette, caplog: pytest.LogCaptureFixture
) -> None:
    body = model_version_created()
    headers = signed_headers(body, delivery_id="d-logged")

    with caplog.at_level(logging.INFO, logger="onnx_stage.bridge"):
        post(app, body, headers)

    assert len(caplog.records) == 1
    assert "d-logged" in caplog.text
    assert "emitted" in caplog.text
    assert SECRET not in caplog.text
    assert headers["X-MLflow-Signature"].split(",", 1)[1] not in caplog.text


def test_sign_matches_what_mlflow_sends() -> None:
    payload = json.dumps({"entity": "model_version", "action": "created", "data": {}})

    ours = sign(SECRET, "d-1", "1750000000", payload.encode())

    assert ours == _generate_hmac_signature(SECRET, "d-1", "1750000000", payload)


def test_healthz(app: Starlette) -> None:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
            return await client.get("/healthz")

    assert asyncio.run(get()).status_code == 200


def test_ledger_forgets_ids_after_retention() -> None:
    clock = FakeClock()
    ledger = DeliveryLedger(retention_seconds=600, capacity=10, clock=clock)

    assert ledger.claim("d-1")
    clock.now += 599
    assert not ledger.claim("d-1")
    clock.now += 2
    assert ledger.claim("d-1")


def test_ledger_evicts_oldest_beyond_capacity() -> None:
    ledger = DeliveryLedger(retention_seconds=600, capacity=2, clock=FakeClock())

    for delivery_id in ("d-1", "d-2", "d-3"):
        assert ledger.claim(delivery_id)

    assert ledger.claim("d-1")
    assert not ledger.claim("d-3")


def test_missing_secret_is_a_startup_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_SECRET, raising=False)

    with pytest.raises(SystemExit, match=ENV_SECRET):
        main([])


def test_settings_from_environment_keep_secret_out_of_repr() -> None:
    settings = load_settings(
        {
            ENV_SECRET: SECRET,
            "ONNX_STAGE_WEBHOOK_MAX_AGE_SECONDS": "60",
            "ONNX_STAGE_WEBHOOK_MAX_BODY_BYTES": "2048",
            "ONNX_STAGE_BRIDGE_PORT": "9000",
        }
    )

    assert (settings.max_age_seconds, settings.max_body_bytes, settings.port) == (60, 2048, 9000)
    assert SECRET not in repr(settings)
    assert load_settings({ENV_SECRET: SECRET}, port=9100).port == 9100
    assert load_settings({ENV_SECRET: SECRET}).port == 8787
