"""MLflow model-registry webhook -> Prefect event bridge.

MLflow POSTs signed registry webhooks here; each accepted delivery becomes one Prefect
event that a deployment trigger can react to. The receiver only verifies and forwards:
it never converts anything, so MLflow (which retries only a few times, immediately, on
429/5xx) always gets a fast answer.

Responses:
    202  emitted, or ignored (event type not handled, or the version is an ONNX twin)
    400  body is not a JSON object, or a handled event lacks required fields
    401  missing webhook header, malformed/out-of-window timestamp, or bad signature
    409  delivery id already accepted (replay); 4xx so MLflow does not retry it
    413  body larger than the cap
    503  emitting the Prefect event failed; the delivery id is forgotten so that
         MLflow's retry of the same delivery can succeed

Environment (read by ``main``):
    ONNX_STAGE_WEBHOOK_SECRET            required; the secret the MLflow webhook signs with
    ONNX_STAGE_WEBHOOK_MAX_AGE_SECONDS   timestamp window, default 300
    ONNX_STAGE_WEBHOOK_MAX_BODY_BYTES    body cap, default 1 MiB
    ONNX_STAGE_BRIDGE_PORT               listen port (``--port`` wins), default 8787
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import uvicorn
from prefect.settings import PREFECT_API_URL
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from onnx_stage.events import (
    MODEL_VERSION_ALIAS_CREATED as PREFECT_ALIAS_CREATED,
    MODEL_VERSION_CREATED as PREFECT_VERSION_CREATED,
    emit_prefect_event,
    model_version_created_payload,
    model_version_resource,
)
from onnx_stage.tasks.register import TWIN_OF

logger = logging.getLogger("onnx_stage.bridge")

WEBHOOK_PATH = "/webhooks/mlflow"
HEALTH_PATH = "/healthz"
HOST = "127.0.0.1"

ENV_SECRET = "ONNX_STAGE_WEBHOOK_SECRET"
ENV_MAX_AGE_SECONDS = "ONNX_STAGE_WEBHOOK_MAX_AGE_SECONDS"
ENV_MAX_BODY_BYTES = "ONNX_STAGE_WEBHOOK_MAX_BODY_BYTES"
ENV_PORT = "ONNX_STAGE_BRIDGE_PORT"

DEFAULT_MAX_AGE_SECONDS = 300
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_PORT = 8787
REMEMBERED_DELIVERIES_CAP = 10_000

DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
SIGNATURE_HEADER = "X-MLflow-Signature"
SIGNATURE_VERSION = "v1"

# Set by the registration step on the ONNX versions it creates; reacting to those would loop.
TWIN_TAG = TWIN_OF

MODEL_VERSION_CREATED = "model_version.created"
MODEL_VERSION_ALIAS_CREATED = "model_version_alias.created"

JsonObject = dict[str, Any]


class Emitter(Protocol):
    def __call__(
        self, *, event: str, resource: dict[str, str], payload: JsonObject
    ) -> object: ...


class ConfigError(ValueError):
    pass


def sign(secret: str, delivery_id: str, timestamp: str | int, body: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends for this delivery."""
    signed_content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed_content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class Decision:
    status_code: int
    status: str
    reason: str | None = None
    event: str | None = None
    error: BaseException | None = None

    def response(self) -> JSONResponse:
        body: JsonObject = {"status": self.status}
        if self.reason is not None:
            body["reason"] = self.reason
        if self.event is not None:
            body["event"] = self.event
        return JSONResponse(body, status_code=self.status_code)


class Rejected(Exception):
    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.decision = Decision(status_code, "rejected", reason=reason)


def ignored(reason: str) -> Decision:
    return Decision(202, "ignored", reason=reason)


class DeliveryLedger:
    """Recently accepted delivery ids, bounded in both time and count."""

    def __init__(self, retention_seconds: float, capacity: int, clock: Callable[[], float]) -> None:
        self._retention_seconds = retention_seconds
        self._capacity = capacity
        self._clock = clock
        self._expiry_by_id: OrderedDict[str, float] = OrderedDict()

    def claim(self, delivery_id: str) -> bool:
        """Record the id; False if it was already recorded."""
        now = self._clock()
        self._forget_expired(now)
        if delivery_id in self._expiry_by_id:
            return False
        if len(self._expiry_by_id) >= self._capacity:
            self._expiry_by_id.popitem(last=False)
        self._expiry_by_id[delivery_id] = now + self._retention_seconds
        return True

    def release(self, delivery_id: str) -> None:
        self._expiry_by_id.pop(delivery_id, None)

    def _forget_expired(self, now: float) -> None:
        # Insertion order is expiry order because every id gets the same retention.
        while self._expiry_by_id:
            oldest_id, expiry = next(iter(self._expiry_by_id.items()))
            if expiry > now:
                return
            del self._expiry_by_id[oldest_id]


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    timestamp: str
    signature: str = field(repr=False)


@dataclass(frozen=True)
class PrefectEvent:
    name: str
    resource: dict[str, str]
    payload: JsonObject


class WebhookReceiver:
    def __init__(
        self,
        secret: str,
        emit: Emitter,
        max_age_seconds: int,
        max_body_bytes: int,
        clock: Callable[[], float],
    ) -> None:
        self._secret = secret
        self._emit = emit
        self._max_age_seconds = max_age_seconds
        self._max_body_bytes = max_body_bytes
        self._clock = clock
        # A timestamp passes the window check for at most 2 * max_age after receipt
        # (it may be up to max_age in the future), so remembering ids that long suffices.
        self._ledger = DeliveryLedger(2 * max_age_seconds, REMEMBERED_DELIVERIES_CAP, clock)

    async def handle(self, request: Request) -> JSONResponse:
        delivery_id = request.headers.get(DELIVERY_ID_HEADER, "")
        try:
            decision = await self._decide(request)
        except Rejected as rejection:
            decision = rejection.decision
        logger.info(
            "delivery=%r event=%s decision=%s status=%d reason=%s",
            delivery_id[:100],
            decision.event or "-",
            decision.status,
            decision.status_code,
            decision.reason or "-",
            exc_info=decision.error,
        )
        return decision.response()

    async def _decide(self, request: Request) -> Decision:
        delivery = read_delivery_headers(request)
        self._check_timestamp(delivery.timestamp)
        body = await read_capped_body(request, self._max_body_bytes)
        self._check_signature(delivery, body)
        # Claimed only after the signature checks out, so forged requests cannot fill the ledger.
        if not self._ledger.claim(delivery.delivery_id):
            raise Rejected(409, "delivery id already accepted")
        return self._dispatch(parse_json_object(body), delivery.delivery_id)

    def _check_timestamp(self, timestamp: str) -> None:
        try:
            sent_at = int(timestamp)
        except ValueError:
            raise Rejected(401, f"{TIMESTAMP_HEADER} is not unix seconds") from None
        if abs(self._clock() - sent_at) > self._max_age_seconds:
            raise Rejected(401, "timestamp outside the accepted window")

    def _check_signature(self, delivery: Delivery, body: bytes) -> None:
        expected = sign(self._secret, delivery.delivery_id, delivery.timestamp, body)
        if not hmac.compare_digest(expected.encode(), delivery.signature.encode()):
            raise Rejected(401, "invalid signature")

    def _dispatch(self, message: JsonObject, delivery_id: str) -> Decision:
        event_type = f"{message.get('entity')}.{message.get('action')}"
        data = message.get("data")
        if event_type not in (MODEL_VERSION_CREATED, MODEL_VERSION_ALIAS_CREATED):
            return ignored(f"event type {event_type!r} is not handled")
        if not isinstance(data, dict):
            raise Rejected(400, "payload 'data' is not an object")
        if event_type == MODEL_VERSION_CREATED:
            if is_onnx_twin(data):
                return ignored(f"version is an ONNX twin (has the {TWIN_TAG!r} tag)")
            return self._forward(model_version_created_event(data, delivery_id), delivery_id)
        return self._forward(model_version_alias_created_event(data, delivery_id), delivery_id)

    def _forward(self, event: PrefectEvent, delivery_id: str) -> Decision:
        try:
            self._emit(event=event.name, resource=event.resource, payload=event.payload)
        except Exception as error:
            self._ledger.release(delivery_id)
            return Decision(
                503, "failed", reason="event emission failed", event=event.name, error=error
            )
        return Decision(202, "emitted", event=event.name)


def read_delivery_headers(request: Request) -> Delivery:
    values = {}
    for header in (DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER):
        value = request.headers.get(header)
        if not value:
            raise Rejected(401, f"missing {header} header")
        values[header] = value
    return Delivery(values[DELIVERY_ID_HEADER], values[TIMESTAMP_HEADER], values[SIGNATURE_HEADER])


async def read_capped_body(request: Request, max_bytes: int) -> bytes:
    # Counted while streaming: Content-Length can be absent (chunked) or wrong.
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise Rejected(413, f"body exceeds {max_bytes} bytes")
    return bytes(body)


def parse_json_object(body: bytes) -> JsonObject:
    try:
        message = json.loads(body)
    except ValueError:
        raise Rejected(400, "body is not JSON") from None
    if not isinstance(message, dict):
        raise Rejected(400, "body is not a JSON object")
    return message


def is_onnx_twin(data: JsonObject) -> bool:
    tags = data.get("tags")
    return isinstance(tags, dict) and TWIN_TAG in tags


def required_field(data: JsonObject, key: str) -> str:
    value = data.get(key)
    if value is None or value == "":
        raise Rejected(400, f"payload data lacks {key!r}")
    return str(value)


def model_version_created_event(data: JsonObject, delivery_id: str) -> PrefectEvent:
    name, version = required_field(data, "name"), required_field(data, "version")
    return PrefectEvent(
        name=PREFECT_VERSION_CREATED,
        resource=model_version_resource(name, version),
        payload=model_version_created_payload(
            name, version, data.get("run_id"), data.get("source"), delivery_id
        ),
    )


def model_version_alias_created_event(data: JsonObject, delivery_id: str) -> PrefectEvent:
    name, version = required_field(data, "name"), required_field(data, "version")
    alias = required_field(data, "alias")
    return PrefectEvent(
        name=PREFECT_ALIAS_CREATED,
        resource={**model_version_resource(name, version), "mlflow.model.alias": alias},
        payload={"name": name, "alias": alias, "version": version, "delivery_id": delivery_id},
    )


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_app(
    secret: str,
    *,
    emit: Emitter = emit_prefect_event,
    max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    if not secret:
        raise ConfigError("webhook secret must not be empty")
    if max_age_seconds <= 0 or max_body_bytes <= 0:
        raise ConfigError("max_age_seconds and max_body_bytes must be positive")
    receiver = WebhookReceiver(secret, emit, max_age_seconds, max_body_bytes, clock)
    return Starlette(
        routes=[
            Route(WEBHOOK_PATH, receiver.handle, methods=["POST"]),
            Route(HEALTH_PATH, healthz, methods=["GET"]),
        ]
    )


@dataclass(frozen=True)
class BridgeSettings:
    secret: str = field(repr=False)
    max_age_seconds: int
    max_body_bytes: int
    port: int


def positive_int_from_env(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def load_settings(environ: Mapping[str, str], port: int | None = None) -> BridgeSettings:
    secret = environ.get(ENV_SECRET, "")
    if not secret:
        raise ConfigError(f"{ENV_SECRET} is not set; it must hold the MLflow webhook secret")
    if port is None:
        port = positive_int_from_env(environ, ENV_PORT, DEFAULT_PORT)
    return BridgeSettings(
        secret=secret,
        max_age_seconds=positive_int_from_env(
            environ, ENV_MAX_AGE_SECONDS, DEFAULT_MAX_AGE_SECONDS
        ),
        max_body_bytes=positive_int_from_env(environ, ENV_MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES),
        port=port,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MLflow registry webhook -> Prefect event bridge")
    parser.add_argument(
        "--port", type=int, help=f"listen port (default: ${ENV_PORT} or {DEFAULT_PORT})"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(os.environ, port=args.port)
    except ConfigError as error:
        raise SystemExit(f"onnx-stage bridge: {error}") from None

    # force: importing Prefect already gave the root logger a handler, which would make this a no-op.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True
    )
    app = create_app(
        settings.secret,
        max_age_seconds=settings.max_age_seconds,
        max_body_bytes=settings.max_body_bytes,
    )
    if PREFECT_API_URL.value() is None:
        logger.warning("PREFECT_API_URL is not set: events go to a throwaway ephemeral server")
    logger.info("listening on http://%s:%d%s", HOST, settings.port, WEBHOOK_PATH)
    # The bridge logs one line per delivery itself; uvicorn's access log would duplicate it.
    uvicorn.run(app, host=HOST, port=settings.port, access_log=False)


if __name__ == "__main__":
    main()
