# Two commands do all set-up on a fresh machine:
#   make lab    installs everything, then runs the main job: the whole lab (5 seeds, 452 runs: 12.9 min on 2 cores, docs/results.md)
#   make test   installs everything, then lints and runs the test suite
PYTHON ?= python3
PIP = $(PYTHON) -m pip
STAMP = .setup-done

.PHONY: setup lab lab-quick test lint bench clean

$(STAMP): pyproject.toml Makefile
	# torch is pinned to the local CPU build of 2.13.0 for this machine; the package declares a range.
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[lab,triton,test,ray]"
	# timm for the tests on real models: --no-deps, as it requires torchvision (which would
	# replace the CPU torch); the models the tests build need none of its dependencies.
	$(PIP) install --quiet --no-deps "timm==1.0.31"
	touch $(STAMP)

# The stamp alone would trust an install that no longer points here (a venv rebuilt, or the
# editable install made from another checkout): check that sharenorm imports from this src/.
INSTALLED = import pathlib, sharenorm, torch; \
	assert torch.__version__.split("+")[0] == "2.13.0"; \
	assert pathlib.Path(sharenorm.__file__).resolve().is_relative_to(pathlib.Path("src").resolve())

setup: $(STAMP)
	@$(PYTHON) -c '$(INSTALLED)' 2>/dev/null || { rm -f $(STAMP) && $(MAKE) --no-print-directory $(STAMP); }

lab: setup
	$(PYTHON) -m sharenorm lab $(ARGS)

lab-quick: setup
	$(PYTHON) -m sharenorm lab --quick $(ARGS)

lint: setup
	$(PYTHON) -m ruff check src tests benchmarks

test: setup lint
	$(PYTHON) -m pytest $(ARGS)

bench: setup
	$(PYTHON) benchmarks/bench_norms.py
	$(PYTHON) benchmarks/bench_fused.py --no-compile
	$(PYTHON) benchmarks/bench_sharing.py

clean:
	rm -rf $(STAMP) build dist src/*.egg-info .pytest_cache lab-results
