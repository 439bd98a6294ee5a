# Two commands do all setup on a fresh machine (see README):
#   make quickstart   # venv + install, then `llmtrain run examples/quickstart.yaml`
#   make test         # venv + install, then lint, types, import layers and the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test lint typecheck layers pytest crd bench controlplane images clean tools

# --compile-bytecode: uv installs no .pyc files by default, and with PYTHONDONTWRITEBYTECODE set
# (as on CI machines and in our images) every process would compile torch, transformers and ray
# from source again: measured, 2-2.5x slower imports in each of the ~7 processes a stage starts.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -c constraints.txt -e ".[train,test]"
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/llmtrain run examples/quickstart.yaml

test: tools lint typecheck layers pytest

# prometheus + promtool for tests/monitoring; containerd, runc, CNI plugins, iptables, socat,
# buildah, debootstrap for the real-node cluster and the test images (apt-get, only when missing).
tools:
	bash tests/monitoring/install-prometheus.sh
	bash tests/controlplane/install-node-tools.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/llmtrain crd --check

# mypy and import-linter read a built copy: neither follows setuptools' editable finder,
# which is what maps operator/ -> llmtrain.operator.
.build/typecheck/.stamp: $(STAMP) $(shell find cli operator trainer -name '*.py')
	rm -rf .build/typecheck build  # setuptools' build/ keeps files that no longer exist
	$(BIN)/uv pip install --python $(BIN)/python -q --no-deps --target .build/typecheck .
	touch $@

typecheck: .build/typecheck/.stamp
	cd .build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml \
		-p llmtrain.cli -p llmtrain.operator -p llmtrain.trainer.config -p llmtrain.trainer.contract

layers: .build/typecheck/.stamp
	PYTHONPATH=.build/typecheck $(BIN)/lint-imports pyproject.toml

# One process. `-n 2` (two lanes, tests/conftest.py) saves little on 2 cores: measured, the
# cluster lane ends after 17 min while the training lane alone takes about 54, and a stage
# starting its own Ray beside the other lane can miss Ray's fixed 30 s raylet wait.
PYTEST_ARGS ?= --durations=30
pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

crd: $(STAMP)
	$(BIN)/llmtrain crd

bench: $(STAMP)
	$(BIN)/python -m benchmarks

controlplane:
	bash tests/controlplane/build.sh
	bash tests/controlplane/nodebuild/build.sh
	bash tests/s3/build.sh

# The operator and trainer images, built from the Dockerfiles on a local Debian base and loaded
# into the test node's containerd (tests/images/build.sh; cached by a hash of their inputs).
images: $(STAMP) tools
	bash tests/images/build.sh

clean:
	rm -rf .build runs
