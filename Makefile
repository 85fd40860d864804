# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel by default; GPU users: make TORCH_SPEC="torch==2.13.0" (or a CUDA build) ...
TORCH_SPEC ?= torch==2.13.0
# mmsegmentation and its stack for tests/test_convert.py (proof against mmseg's own forward pass):
# --no-deps, since mmengine/mmcv-lite ask for opencv-python (GUI) and would fight the headless one;
# their remaining dependencies are the pinned `interop` extra of pyproject.toml
INTEROP_NODEPS ?= mmengine==0.10.7 mmcv-lite==2.1.0 mmsegmentation==1.2.2
# the local CPU wheel of this machine image, when present
PIP_FIND ?= $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
DEMO_OUT ?= runs/demo

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_FIND) "$(TORCH_SPEC)"
	$(PY) -m pip install -q $(PIP_FIND) -e ".[test,triton,interop]"
	$(PY) -m pip install -q $(PIP_FIND) --no-deps $(INTEROP_NODEPS)
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m pspnet_deploy.demo --out $(DEMO_OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
