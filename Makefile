# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# The install brings the `trl` extra: the TRL trainers' tests (tests/test_trl.py) run in `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch first, pinned: on this CPU-only platform torch==2.13.0 is a local CPU wheel, while an
# unpinned torch pulls a multi-GB CUDA build. On a GPU machine: make TORCH_SPEC=torch install
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test warmstart data clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[trl]'
	touch $@

demo: install
	$(PY) -m rlsd_min demo

test: install
	$(PY) -m pytest -q tests
	RLSD_PROFILE=ci $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env notebooks/

data: install
	$(PY) -m rlsd_min data --force

warmstart: install
	$(PY) -m rlsd_min warmstart --force

clean:
	rm -rf $(VENV) runs
