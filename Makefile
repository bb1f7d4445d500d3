# signflow: the two commands that matter are `make run-local` and `make test`.
# Both build the project's interpreter (.venv) first when it is missing or stale.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PY := .venv/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0
# Beam's multi-processing workers import the pipeline's modules by name.
export PYTHONPATH := $(CURDIR)

# The locked dependencies (~3.3 GB) live outside the checkout, keyed by the hash of
# the lock, so a fresh clone (CI) reuses them while the lock is unchanged. .venv is this
# clone's own small venv on top of them, with the checkout installed in editable mode
# (.venv/bin/signflow, .venv/bin/signflow-serve); see .ci/make-venv.
VENV_KEY := $(shell cat requirements.lock | sha256sum | cut -c1-16)
VENV_STORE ?= $(HOME)/.cache/signflow/venvs
VENV_DIR := $(VENV_STORE)/$(VENV_KEY)

.PHONY: help venv run-local test test-fast serve schedule status rollback versions ingest weights lock clean

help:
	@echo "make run-local             set up, then run the pipeline once on the committed sample"
	@echo "make test                  set up, then run the whole test suite (what CI runs)"
	@echo "make test-fast             the inner loop: every test not marked slow (no training, no pipelines)"
	@echo "make serve                 serve serving_model/\$$(MODEL) on 8500 (gRPC) and 8501 (REST)"
	@echo "make schedule              the training server: retrain on a schedule and when new data arrives"
	@echo "make status                what the training server did last, what waits, what is served"
	@echo "make versions              list the served versions and their lineage"
	@echo "make rollback [VERSION=N]  take the newest version (or all newer than N) out of service"
	@echo "make ingest                ingest data/inbox into a new span only"
	@echo "make weights WEIGHTS=FILE  check and install Xception's pretrained no-top weights (offline sites)"
	@echo "make venv                  only set up the project's interpreter (.venv)"

venv: .venv/.ready-$(VENV_KEY)

.venv/.ready-$(VENV_KEY): requirements.lock setup.py .ci/make-venv
	@bash .ci/make-venv "$(VENV_DIR)" .venv
	@touch "$@"

MODEL ?= xception
SERVE_FLAGS ?=
SCHEDULE_FLAGS ?= --interval=6h --min-new-records=100 --poll=30s
VERSION ?=

run-local: venv
	$(PY) -m pipeline.cli run

# tensorflow_model_server is used instead when it is on PATH (same flags, same clients).
# The feedback and training-status routes are signflow's own: TF Serving has no
# equivalent, so they are asked for only when signflow's server is the one that runs.
SIGNFLOW_SERVE_FLAGS := $(if $(shell command -v tensorflow_model_server),,\
  --feedback_dir=$(CURDIR)/data/inbox/feedback \
  --training_status_file=$(CURDIR)/pipeline_root/signflow/schedule/status.json)

serve: venv
	$(PY) -m serving --prefer_tensorflow_model_server --model_name=$(MODEL) \
	  --model_base_path=$(CURDIR)/serving_model/$(MODEL) --port=8500 --rest_api_port=8501 \
	  $(SIGNFLOW_SERVE_FLAGS) $(SERVE_FLAGS)

# The training server: make serve in one terminal, make schedule in another.
schedule: venv
	$(PY) -m pipeline.cli schedule $(SCHEDULE_FLAGS)

status: venv
	$(PY) -m pipeline.cli status

versions: venv
	$(PY) -m pipeline.cli versions --model_name=$(MODEL)

rollback: venv
	$(PY) -m pipeline.cli rollback --model_name=$(MODEL) $(if $(VERSION),--to=$(VERSION))

ingest: venv
	$(PY) -m pipeline.cli ingest

# Pretrained backbone weights for machines that cannot download them: checked, then placed
# where the Trainer finds them (docs/trainer.md#pretrained-weights-offline).
WEIGHTS ?=
weights: venv
	@test -n "$(WEIGHTS)" || { echo 'usage: make weights WEIGHTS=/path/to/xception_weights_tf_dim_ordering_tf_kernels_notop.h5' >&2; exit 2; }
	$(PY) -m pipeline.cli weights import "$(WEIGHTS)"

# Debian's chromium for the browser tests (tests/ui/); a no-op when it is there.
.PHONY: browser
browser:
	@bash .ci/install-browser

# One worker per core (at most 4: each holds its own TensorFlow), one test module per worker so a
# module's fixtures are built once. Modules go out in tests/conftest.py's order (longest first: the
# end-to-end story starts at once beside the rest), not xdist's (most tests first).
PYTEST_WORKERS ?= -n auto --maxprocesses=4 --dist loadscope --no-loadscope-reorder

test: venv browser
	$(PY) -m pytest -q $(PYTEST_WORKERS)

test-fast: venv browser
	$(PY) -m pytest -q -m "not slow" $(PYTEST_WORKERS)

clean:
	rm -rf pipeline_root bench/out .pytest_cache

# Regenerate requirements.lock from requirements.in in a scratch venv.
lock:
	@bash .ci/make-lock
