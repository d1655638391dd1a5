# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# The install brings the `trl` and `peft` extras (the TRL trainers' tests, tests/test_trl.py, LoRA included,
# run in `make test`) and the `dev` extra: the `course` extra (jupyter, jupytext, pytest, nbval: the
# notebooks and the tests), the linter and pytest's workers.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch first, pinned. Which build pip picks depends on the machine's package index: on PyPI,
# Linux x86-64 gets the CUDA build (multi-GB); TORCH_INDEX=https://download.pytorch.org/whl/cpu
# asks PyTorch's index for the CPU build. On a GPU machine with another CUDA: set TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: install demo test notebooks warmstart data clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[trl,peft,dev]'
	touch $@

demo: install
	$(PY) -m rlsd_min demo

# The linter, the unit tests on two workers (one torch thread each), then every notebook on the ci
# profile with the exercises' solutions in (RLSD_SOLUTIONS=1: a broken exercise or check fails), its
# ci run folders trained afresh, one notebook after another (later notebooks read earlier runs).
test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 tests
	rm -rf runs/course/ci
	RLSD_PROFILE=ci RLSD_SOLUTIONS=1 $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env notebooks/

# The notebooks' scripts (notebooks/NN_name.py, py:percent) are what people edit: this writes their
# cells into the .ipynb, keeping the stored outputs (re-execute a notebook whose code changed).
notebooks: install
	$(PY) -m jupytext --to notebook --update notebooks/[0-9]*.py

data: install
	$(PY) -m rlsd_min data --force

warmstart: install
	$(PY) -m rlsd_min warmstart --force

clean:
	rm -rf $(VENV) runs
