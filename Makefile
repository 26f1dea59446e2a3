# ckptdiff: `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
PIPOPTS = --quiet --disable-pip-version-check -c constraints.txt
STAMP   = $(VENV)/.installed
EXAMPLES = examples

.PHONY: install demo test lint bench fuzz sweep security-report clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIPOPTS) torch==2.13.0  # first, so nothing below pulls another build
	$(PIP) install $(PIPOPTS) -e '.[dev]'  # dev: the hf extra and all the suite needs
	$(PY) -m compileall -q ckptdiff  # bytecode, even where PYTHONDONTWRITEBYTECODE is set
	touch $(STAMP)

CKPTDIFF = $(VENV)/bin/ckptdiff

demo: install
	@$(PY) -m ckptdiff.examples $(EXAMPLES)
	@echo
	@echo '$$ ckptdiff inspect $(EXAMPLES)/minilm --depth 1'
	@$(CKPTDIFF) inspect $(EXAMPLES)/minilm --depth 1
	@echo '$$ ckptdiff diff $(EXAMPLES)/finetuned_ddp.pt $(EXAMPLES)/minilm'
	@$(CKPTDIFF) diff $(EXAMPLES)/finetuned_ddp.pt $(EXAMPLES)/minilm; echo "(exit code $$?)"
	@echo
	@echo '$$ ckptdiff check $(EXAMPLES)/minilm --model hf-config:$(EXAMPLES)/minilm/config.json'
	@$(CKPTDIFF) check $(EXAMPLES)/minilm --model hf-config:$(EXAMPLES)/minilm/config.json --depth 1; echo "(exit code $$?)"
	@echo
	@echo '$$ ckptdiff check $(EXAMPLES)/clip_l14_336.safetensors --model ckptdiff.examples.clip:build_clip --config $(EXAMPLES)/clip/ViT-B-16.json'
	@$(CKPTDIFF) check $(EXAMPLES)/clip_l14_336.safetensors --model ckptdiff.examples.clip:build_clip --config $(EXAMPLES)/clip/ViT-B-16.json --depth 1; echo "(exit code $$?)"
	@echo
	@echo '$$ ckptdiff identify $(EXAMPLES)/clip_l14_336.safetensors --candidates $(EXAMPLES)/clip --model ckptdiff.examples.clip:build_clip'
	@$(CKPTDIFF) identify $(EXAMPLES)/clip_l14_336.safetensors --candidates $(EXAMPLES)/clip --model ckptdiff.examples.clip:build_clip; echo "(exit code $$?)"
	@echo
	@echo '$$ ckptdiff forward --model ckptdiff.examples.coca:CoCa --config $(EXAMPLES)/coca_roberta-ViT-B-32.json --input image=2x3x224x224 --input text=2x77'
	@$(CKPTDIFF) forward --model ckptdiff.examples.coca:CoCa --config $(EXAMPLES)/coca_roberta-ViT-B-32.json --input image=2x3x224x224 --input text=2x77; echo "(exit code $$?)"

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check ckptdiff tests fixtures bench
	$(VENV)/bin/ruff format --check ckptdiff tests fixtures bench
	$(VENV)/bin/mypy ckptdiff

bench: install
	$(PY) -m bench.run

# the readers on mutated files, far longer than in `make test` (FUZZ_EXAMPLES per target)
FUZZ_EXAMPLES ?= 5000
fuzz: install
	CKPTDIFF_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/security/test_fuzz.py

# every transformers architecture that builds small, mutated, checked with --emit-config and
# judged by transformers itself; prints the figures (SWEEP_ARGS: see python -m tests.sweep.run -h)
SWEEP_ARGS ?=
sweep: install
	$(PY) -m tests.sweep.run $(SWEEP_ARGS)

# the hostile corpus through ckptdiff and torch.load(weights_only=True), side by side
security-report: install
	$(PY) -m bench.security

clean:
	rm -rf $(VENV) $(EXAMPLES) bench/out .pytest_cache
