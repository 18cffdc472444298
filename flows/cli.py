"""onnx-stage: the command line of the conversion stage."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
import tempfile
from typing import TextIO

from onnx_stage.config import ConfigError, load_config
from onnx_stage.errors import StageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onnx-stage", description="Keras → ONNX conversion stage for MLflow.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert one Keras model version and register its ONNX twin")
    convert.add_argument("--model", required=True, help="registered model name (for --path: the twin's base name)")
    selector = convert.add_mutually_exclusive_group()
    selector.add_argument("--version", help="model version number")
    selector.add_argument("--alias", help="model version alias, e.g. champion")
    selector.add_argument("--path", help="a .h5/.keras file (local path or MLflow artifact URI) instead of the registry")
    convert.add_argument("--config", help="YAML config file (default: configs/default.yaml)")
    convert.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value, e.g. --set validation.atol=1e-5 (repeatable)")
    convert.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)

    debug = args.debug or bool(os.environ.get("ONNX_STAGE_DEBUG"))
    # Prefect's ephemeral server otherwise phones home (no network here) and races its own sqlite writes
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a loaded machine starts slowly
    errors = sys.stderr if debug else _log_to_stdout()
    try:
        config = load_config(args.config, args.overrides)
        from onnx_stage.flows.convert_flow import convert_model  # imports Prefect and MLflow: after the cheap checks
        from onnx_stage.access import check_write_access
        from onnx_stage.lease import start_ephemeral_prefect
        from onnx_stage.tracking import configure_tracking

        if not debug:
            _hide_tracebacks()
        configure_tracking()
        check_write_access(args.model, config, from_registry=args.path is None)
        start_ephemeral_prefect()
        twin = convert_model(model_name=args.model, version=args.version, alias=args.alias, path=args.path,
                             config=config)
    except (StageError, ConfigError) as error:
        print(f"onnx-stage: error: {_one_line(str(error))}", file=errors, flush=True)
        return 1
    except Exception as error:
        if debug:
            raise
        print(f"onnx-stage: error: {_one_line(f'{type(error).__name__}: {error}')} (rerun with --debug for the "
              "traceback)", file=errors, flush=True)
        return 1
    status = "registered" if twin.created else "already registered, nothing new created"
    print(f"\n{twin.name} version {twin.version} ({status}): {twin.uri}")
    return 0


def _log_to_stdout() -> TextIO:
    """Send everything the run logs (Prefect's task log, MLflow's and TensorFlow's warnings, progress bars) to stdout,
    for this process and the ones it starts; return a stream on the real stderr for the one error line. Called
    in-process with stderr already redirected (pytest's capsys), it leaves the file descriptors alone."""
    if sys.stderr is not sys.__stderr__ or sys.__stderr__ is None:
        return sys.stderr
    sys.stderr.flush()
    errors = os.fdopen(os.dup(2), "w")
    os.dup2(1, 2)
    return errors


def _one_line(message: str) -> str:
    """The error as one line; a full disk gets the fix (where the scratch files go) added, and MLflow giving up on a
    server that went away during the run says so instead of quoting the failed request."""
    line = " ".join(message.split())
    if "Max retries exceeded" in line:
        reason = re.search(r"\[Errno -?\d+\][^\"')]*", line)
        line = (f"MLflow at {os.environ.get('MLFLOW_TRACKING_URI', 'the tracking URI')} stopped answering during the "
                f"run ({reason.group(0) if reason else 'no answer'}; "
                f"{os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES')} retries): rerun once it answers again; "
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES and MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR make a run wait longer")
    if os.strerror(errno.ENOSPC) in line and "TMPDIR" not in line:
        line += (f"; free space there, or point TMPDIR at a disk with room (scratch files go to "
                 f"{tempfile.gettempdir()})")
    return line


def _hide_tracebacks() -> None:
    """Prefect logs every flow failure with its traceback; the CLI reports the cause in one line instead."""

    def drop_traceback(record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True

    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("prefect")]
    for logger in [logging.root, *loggers]:
        for handler in logger.handlers:
            handler.addFilter(drop_traceback)


if __name__ == "__main__":
    sys.exit(main())
