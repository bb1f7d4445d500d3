# signflow: the two commands that matter are `make run-local` and `make test`.
# Both build the project's interpreter (.venv) first when it is missing or stale.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PY := .venv/bin/python
# Every entry point runs Keras 2 through tf-keras (TFX 1.16 needs it); this must
# be set before anything imports TensorFlow.
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0

# The venv is ~3.3 GB, so it lives outside the checkout, keyed by the hash of
# what defines it, and .venv links to it: a fresh clone (CI) reuses it while
# the lock is unchanged, and a changed lock builds a new one beside it.
VENV_KEY := $(shell cat requirements.lock setup.py | sha256sum | cut -c1-16)
VENV_STORE ?= $(HOME)/.cache/signflow/venvs
VENV_DIR := $(VENV_STORE)/$(VENV_KEY)

.PHONY: help venv run-local test test-fast serve schedule rollback versions ingest bench lock clean

help:
	@echo "make run-local   set up, then run the pipeline once on the committed sample"
	@echo "make test        set up, then run the test suite"
	@echo "make venv        only set up the project's interpreter (.venv)"

venv: .venv/.ready-$(VENV_KEY)

.venv/.ready-$(VENV_KEY): requirements.lock setup.py
	@bash .ci/make-venv "$(VENV_DIR)"
	@ln -sfn "$(VENV_DIR)" .venv
	@touch "$@"

run-local: venv
	$(PY) -m pipeline.local_runner

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf pipeline_root bench/out .pytest_cache

# Regenerate requirements.lock from requirements.in in a scratch venv.
lock:
	@bash .ci/make-lock
