# Two entry points for a fresh machine (see README): the main job and the tests. Both install first;
# scripts/install.sh skips every step that is already done.
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 1

.PHONY: install demo test bench

install:
	bash scripts/install.sh

demo: install
	.venv/bin/biomedgpt-demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q

bench: install
	OMP_NUM_THREADS=2 $(PY) bench/bench_model.py --threads 2
