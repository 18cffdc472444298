# The two newcomer commands: `make demo` and `make test`. Both install everything first (pinned by uv.lock).
SHELL := /bin/bash
UV_VERSION := 0.13.8
export UV_PYTHON_DOWNLOADS := never
export UV_COMPILE_BYTECODE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export TF_CPP_MIN_LOG_LEVEL := 3
export MLFLOW_DISABLE_TELEMETRY ?= true
export ONNX_STAGE_HOME ?= $(CURDIR)/.onnx-stage
export PREFECT_HOME ?= $(ONNX_STAGE_HOME)/prefect
VENV := .venv
MLFLOW_STORE = sqlite:///$(ONNX_STAGE_HOME)/mlflow.db

.PHONY: setup demo test ui-commands stack-up stack-down deploy

setup: $(VENV)/.synced
	@mkdir -p "$(PREFECT_HOME)"

$(VENV)/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null && uv --version | grep -q "$(UV_VERSION)" || python3 -m pip install -q "uv==$(UV_VERSION)"
	uv sync --frozen --python python3.11
	@touch $@

demo: setup
	$(VENV)/bin/python -m onnx_stage.flows.train_demo
	$(VENV)/bin/onnx-stage convert --model digits-mlp --alias champion
	@$(MAKE) --no-print-directory ui-commands

ui-commands:
	@echo
	@echo "MLflow UI  (same store):  $(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri $(MLFLOW_STORE)"
	@echo "                          then open http://127.0.0.1:5000/#/models/digits-mlp-onnx"
	@echo "Prefect UI (same store):  PREFECT_HOME=$(PREFECT_HOME) $(VENV)/bin/prefect server start --host 127.0.0.1"
	@echo "                          then open http://127.0.0.1:4200/runs"

test: setup
	$(VENV)/bin/python -m pytest

# The local stack on 127.0.0.1 (mlflow server, prefect server, worker, webhook bridge): README "Deployments".
# PROFILE=production: PostgreSQL, S3, Redis, MLflow with auth, Prefect replicas behind nginx: README "Production stack".
PROFILE ?= local
stack-up: setup
	$(VENV)/bin/python -m deployments.stack up --profile $(PROFILE)

stack-down:
	$(VENV)/bin/python -m deployments.stack down

# Redeploy deployments/prefect.yaml to the Prefect server in PREFECT_API_URL (stack-up does this itself).
deploy: setup
	$(VENV)/bin/python -m deployments.deploy
