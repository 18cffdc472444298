"""Before a conversion writes anything: may the MLflow user (MLFLOW_TRACKING_USERNAME) write what it will write?

On a tracking server with basic-auth, a conversion tags the source's registered model, registers a version of the
twin's registered model and logs a run into the stage's experiment: each needs EDIT (or MANAGE). A user without it
gets one line naming the resource and the fix before any conversion starts, so nothing is half-written. The password
(MLFLOW_TRACKING_PASSWORD) is only ever handed to MLflow's own request code, never printed.
"""
from __future__ import annotations

import os

from onnx_stage.config import StageConfig
from onnx_stage.errors import StageError

WRITE_PERMISSIONS = ("EDIT", "MANAGE")
PERMISSION_ENDPOINT = "/api/3.0/mlflow/users/permissions/get"
CURRENT_USER_ENDPOINT = "/api/2.0/mlflow/users/current"


def _get(tracking_uri: str, endpoint: str, params: dict[str, str] | None = None):  # -> requests.Response
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    return http_request(get_default_host_creds(tracking_uri), endpoint, "GET", params=params or {},
                        max_retries=0)


def signed_in(tracking_uri: str, username: str) -> bool:
    """True on a basic-auth server that accepts the login, False on a server without basic-auth; a refused login
    raises a one-line StageError."""
    status = _get(tracking_uri, CURRENT_USER_ENDPOINT).status_code
    if status == 401:
        raise StageError(f"MLflow at {tracking_uri} refused the login of user {username!r}; check "
                         "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    return status == 200


def user_permission(tracking_uri: str, username: str, resource_type: str, resource_id: str) -> str:
    """The user's own permission on one resource (READ, EDIT, …)."""
    response = _get(tracking_uri, PERMISSION_ENDPOINT,
                    {"username": username, "resource_type": resource_type, "resource_id": resource_id})
    if response.status_code != 200:
        raise StageError(f"MLflow at {tracking_uri} answered {response.status_code} when asked for user {username!r}'s "
                         f"permission on {resource_type} {resource_id!r}; check the server's log")
    return response.json()["permission"]


def check_write_access(model_name: str, config: StageConfig, from_registry: bool = True) -> None:
    """Raise a one-line StageError unless the current MLflow user may write every registry object a conversion
    of `model_name` writes (its versions are tagged only when `from_registry`); does nothing on an embedded store
    or a server without basic-auth, and leaves a missing source model to the load task's error."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    tracking_uri = mlflow.get_tracking_uri()
    username = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if not username or not tracking_uri.startswith(("http://", "https://")) or not signed_in(tracking_uri, username):
        return
    client = MlflowClient()
    twin_name = config.registry.name_template.format(name=model_name)
    resources = []
    for name, why, wanted in [(model_name, "tags its versions with their twins", from_registry),
                              (twin_name, "registers the twin there", True)]:
        try:
            if wanted:
                client.get_registered_model(name)
                resources.append(("registered_model", name, name, why))
        except MlflowException:
            pass  # a missing source is the load task's error; a missing twin model any signed-in user may create
    if experiment := client.get_experiment_by_name(config.registry.experiment):
        resources.append(("experiment", experiment.experiment_id, config.registry.experiment, "logs its run there"))
    for resource_type, resource_id, shown, why in resources:
        permission = user_permission(tracking_uri, username, resource_type, resource_id)
        if permission not in WRITE_PERMISSIONS:
            raise StageError(f"MLflow user {username!r} has {permission} on {resource_type.replace('_', ' ')} "
                             f"{shown!r} but a conversion {why}: ask an MLflow admin to grant EDIT on it, or run "
                             "as the stage's user (nothing was written)")
