"""The Prefect events a registry change raises, one shape for the webhook bridge and for training flows.

After `mlflow.register_model(...)` a training flow can announce the version itself, no webhook needed:

    from onnx_stage.events import announce_model_version
    announce_model_version(registered.name, registered.version)
"""
from __future__ import annotations

from typing import Any

from prefect.events import Event, emit_event

MODEL_VERSION_CREATED = "mlflow.model_version.created"
MODEL_VERSION_ALIAS_CREATED = "mlflow.model_version_alias.created"


class EmissionFailed(RuntimeError):
    pass


def model_version_resource(name: str, version: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"mlflow.model_version.{name}.{version}",
        "mlflow.model.name": name,
        "mlflow.model.version": version,
    }


def model_version_created_payload(name: str, version: str, run_id: str | None, source: str | None,
                                  delivery_id: str | None) -> dict[str, Any]:
    return {"name": name, "version": version, "run_id": run_id, "source": source, "delivery_id": delivery_id}


def emit_prefect_event(*, event: str, resource: dict[str, str], payload: dict[str, Any]) -> Event:
    emitted = emit_event(event=event, resource=resource, payload=payload)
    # emit_event swallows its own errors and returns None when it cannot emit.
    if emitted is None:
        raise EmissionFailed(f"Prefect did not emit {event!r}; check PREFECT_API_URL")
    return emitted


def announce_model_version(name: str, version: str | int, run_id: str | None = None,
                           source: str | None = None) -> Event:
    """Emit `mlflow.model_version.created` for a Keras version just registered: its ONNX conversion starts."""
    version = str(version)
    return emit_prefect_event(event=MODEL_VERSION_CREATED, resource=model_version_resource(name, version),
                              payload=model_version_created_payload(name, version, run_id, source, None))
