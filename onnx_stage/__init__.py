"""Keras → ONNX conversion stage.

MLflow's client telemetry is off unless MLFLOW_DISABLE_TELEMETRY says otherwise: the stage runs where nothing
may call out, and MLflow drops the variable from os.environ when its telemetry client fails to start, which
races with threads reading the environment (KeyError '_MLFLOW_TELEMETRY_SESSION_ID' in an HTTP request).
"""
import os


def apply_environment_defaults() -> None:
    """Set the stage's defaults for MLflow's client in os.environ, where the user has not set them. Run at import, and
    again by a warm engine's flow-run process after it takes over the flow run's environment."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow retries a failed HTTP request 7 times with backoff 2 (up to ~4 min of waiting per call, 510 s seen for
    # one run against a server that is down; a server that is down at the start is now caught in seconds by
    # tracking.check_reachable): 6 retries with backoff 1 ride out a server restart (waits 0+2+4+8+16+32 s: a restart
    # on a loaded 2-core machine took 20-40 s) and give up after about a minute. Set either variable to override.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "6")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


apply_environment_defaults()
