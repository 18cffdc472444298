"""Keras → ONNX conversion stage.

MLflow's client telemetry is off unless MLFLOW_DISABLE_TELEMETRY says otherwise: the stage runs where nothing
may call out, and MLflow drops the variable from os.environ when its telemetry client fails to start, which
races with threads reading the environment (KeyError '_MLFLOW_TELEMETRY_SESSION_ID' in an HTTP request).
"""
import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
