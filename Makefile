# Two commands do all set-up: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench peers-env clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,bench]'
	touch $(STAMP)

# The loader on a generated dataset, then the quick side-by-side benchmark (results in out/).
demo: $(STAMP)
	$(PY) -m ringload.demo
	$(VENV)/bin/ringload bench --quick --no-progress --out out/bench-quick.json

test: $(STAMP)
	$(PY) -m pytest -q

# Everything but the tests marked slow (a quick check while editing; make test runs all).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(VENV)/bin/ringload bench

# The interpreter the peers (torchcodec, decord, SPDL) run in, for `ringload bench --peer-python`:
# a venv under ~/.cache/ringload/peers-venv (several GB) plus Debian's ffmpeg libraries.
peers-env:
	bash bench/peers_env.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
