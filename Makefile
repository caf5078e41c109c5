# Everything runs from a project-local virtualenv that the first target creates.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
# Debian packages: Pango for WeasyPrint (report.pdf) with HarfBuzz-Subset (fast font subsetting), a pinned
# font so PDF page breaks are the same everywhere, poppler-utils for the tests that turn the PDF into page images, cron for `lucent schedule --install`,
# prometheus-pushgateway for the tests that push monitoring metrics to a real Pushgateway, a Java 17 runtime
# for the Spark engine's tests (pyspark starts a JVM).
SYSTEM_PACKAGES := libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core fonts-wqy-microhei poppler-utils cron prometheus-pushgateway openjdk-17-jre-headless

.PHONY: help install demo demo-text demo-image demo-endpoint demo-monitor test test-fast test-spark lint bench image image-spark clean
BASE_IMAGE ?= $(or $(LUCENT_BASE_IMAGE),python:3.11-slim)
IMAGE      ?= lucent:dev
# Test worker processes (pytest-xdist); 0 runs the suite in one process, in file order.
PYTEST_WORKERS ?= 2
SPARK_IMAGE ?= lucent-spark:dev

help:
	@echo "make demo       set up and run a full job on the bundled sample data (results in build/demo/output)"
	@echo "make demo-text  set up and run a text job: every word of product reviews explained (build/demo-text/output)"
	@echo "make demo-image  explain a small image classifier's pictures, segment by segment (build/demo-image/output)"
	@echo "make demo-endpoint  serve the demo model with \`lucent endpoint\` (capture + explanations), call it with boto3"
	@echo "make demo-monitor  the bias-monitoring walkthrough: endpoint capture, baselines, \`lucent monitor\` on a normal and a drifted hour"
	@echo "make test       set up and run lint + the whole test suite (slow end-to-end tests included), on"
	@echo "                PYTEST_WORKERS=2 processes (PYTEST_WORKERS=0: one process, in file order)"
	@echo "make test-fast  the test suite without tests marked slow"
	@echo "make test-spark the Spark engine's tests alone (local[2] and a standalone cluster; Java 17)"
	@echo "                (both fail when the smclarify oracle is missing; LUCENT_TESTS_WITHOUT_ORACLE=1 skips its tests)"
	@echo "make lint       ruff"
	@echo "make bench      speed and memory benchmarks (figures and ratios against references)"
	@echo "make image      build the container image (BASE_IMAGE=... to choose the base)"
	@echo "make image-spark  the image with Java 17 and lucent[spark]: --engine spark, multi-host jobs (SPARK_IMAGE=...)"

$(STAMP): pyproject.toml
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages: $$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	# Test-only oracle (see pyproject.toml); --no-deps because its metadata pins nothing useful.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps smclarify==0.5
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf build/demo
	$(PY) -m container.demo build/demo

demo-text: $(STAMP)
	rm -rf build/demo-text
	$(PY) -m container.demo --text build/demo-text

demo-image: $(STAMP)
	rm -rf build/demo-image
	$(PY) -m container.image_demo build/demo-image

demo-endpoint: $(STAMP)
	rm -rf build/demo-endpoint
	$(PY) -m container.demo --endpoint build/demo-endpoint

demo-monitor: $(STAMP)
	rm -rf build/demo-monitor
	$(PY) -m container.monitor.demo build/demo-monitor

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

test-fast: lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow"

test-spark: $(STAMP)
	$(PY) -m pytest tests/test_engine_*.py -q

# The benchmarks' references (shap) are not test dependencies: installed on first `make bench`.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/bias.py
	$(PY) bench/predict.py
	$(PY) bench/shap.py
	$(PY) bench/endpoint.py
	$(PY) bench/scale.py
	$(PY) bench/image.py
	$(PY) bench/timeseries.py
	$(PY) bench/spark.py --rows 20000000 --records 8000

image: $(STAMP)
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  docker build --network=host --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) . ; \
	else \
	  $(PY) -c 'import docker, sys; docker.from_env().images.build(path=".", tag=sys.argv[1], buildargs={"BASE_IMAGE": sys.argv[2]}, network_mode="host", rm=True); print("built", sys.argv[1])' $(IMAGE) $(BASE_IMAGE); \
	fi

image-spark: $(STAMP)
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  docker build --network=host --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg LUCENT_EXTRAS=spark -t $(SPARK_IMAGE) . ; \
	else \
	  $(PY) -c 'import docker, sys; docker.from_env().images.build(path=".", tag=sys.argv[1], buildargs={"BASE_IMAGE": sys.argv[2], "LUCENT_EXTRAS": "spark"}, network_mode="host", rm=True); print("built", sys.argv[1])' $(SPARK_IMAGE) $(BASE_IMAGE); \
	fi

clean:
	rm -rf build .pytest_cache .ruff_cache
