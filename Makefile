# Set-up is these targets: each creates .venv when missing and installs exactly what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[torch,dev]'
	touch $(STAMP)

# The bundled digits example: export, optimize, quantize to int8 with real calibration data.
demo: $(STAMP)
	$(BIN)/edgeport export examples.digits.model:DigitsCNN \
		--weights examples/digits/digits_cnn.pt --input image:batchx1x8x8 \
		--calib examples/digits/calib.npz --eval examples/digits/test.npz -o out/digits

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/quantize.py

clean:
	rm -rf $(VENV) out .pytest_cache
