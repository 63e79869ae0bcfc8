# Set-up is these targets: each creates .venv when missing and installs exactly what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A second environment with the OpenVINO build of onnxruntime (it replaces the onnxruntime
# module, so it cannot share .venv): the multi-provider tests run there for real.
OV_VENV := .venv-openvino
OV_STAMP := $(OV_VENV)/.installed
OV_ORT := onnxruntime-openvino==1.24.1

.PHONY: demo test bench fuzz clean browser

# Debian's Chromium and ChromeDriver for the report.html browser test (tests/exporter/test_html_report.py).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[torch,dev,qnn,report]'
	touch $(STAMP)

# edgeport without torch and with onnxruntime-openvino in place of onnxruntime.
$(OV_STAMP): pyproject.toml
	test -x $(OV_VENV)/bin/python || $(PYTHON) -m venv $(OV_VENV)
	$(OV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check '$(OV_ORT)' onnx numpy click tqdm pytest
	$(OV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(OV_STAMP)

# The bundled digits example: export, optimize, quantize to int8 with real calibration data,
# then validate against the CI-runner profile (exit 1 if a budget fails).
demo: $(STAMP)
	$(BIN)/edgeport export examples.digits.model:DigitsCNN \
		--weights examples/digits/digits_cnn.pt --input image:batchx1x8x8 \
		--calib examples/digits/calib.npz --eval examples/digits/test.npz \
		--profile ci-x86-avx2 -o out/digits

test: $(STAMP) $(OV_STAMP) browser
	$(BIN)/python -m pytest -q
	$(OV_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/runtimes/test_openvino.py

# Coverage-guided fuzzing of the ONNX, profile, data and input-spec loaders (atheris, not a
# dependency: installed here on demand). FUZZ_SECONDS bounds it; findings land as crash-* files.
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check atheris
	$(BIN)/python fuzz/fuzz_loaders.py -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 fuzz/corpus

# Side-by-side measurements (minutes; not part of the tests): see bench/README.md.
bench: $(STAMP)
	$(BIN)/python bench/quantize.py
	$(BIN)/python bench/validate.py
	$(BIN)/python bench/compress.py
	$(BIN)/python bench/accuracy.py  # builds bench/.venv-accuracy (with NNCF) on first run

clean:
	rm -rf $(VENV) $(OV_VENV) out .pytest_cache
