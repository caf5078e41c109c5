# Lucent processing-job image. Runs `lucent run` on /opt/ml/processing with no arguments,
# as SageMaker Processing starts the Clarify container (spec clarify-contract.md section 1.1).
#
#   docker build --network=host --build-arg BASE_IMAGE=python:3.11-slim -t lucent .
#
# The Spark engine's image (`make image-spark`): the same image plus a Java runtime and `lucent[spark]`
# (pyspark), for `--engine spark`, multi-host processing jobs (resourceconfig.json, docs/spark.md) and as
# the executors' image of a Spark cluster (`spark.kubernetes.container.image`):
#
#   docker build --network=host --build-arg LUCENT_EXTRAS=spark -t lucent-spark .
#
# Any Debian bookworm (or newer) base with python3 >= 3.11, venv and pip works.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lucent/bin:$PATH \
    # Writable caches for any uid: users run the image with `--user $(id -u):$(id -g)` so the results
    # on their mounted volume belong to them, and that uid has no home directory in the image.
    MPLCONFIGDIR=/tmp/lucent-matplotlib \
    XDG_CACHE_HOME=/tmp/lucent-cache \
    # `lucent serve-model` listens on 127.0.0.1 by default; in a container it must take connections from
    # outside (a model image built FROM this one and started with `serve`, as SageMaker hosting does).
    LUCENT_HOST=0.0.0.0

# Pango for WeasyPrint (report.pdf), HarfBuzz-Subset for its font subsetting (ten times faster than
# fontTools), and a pinned font so the PDF lays out the same as on a host.
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core fonts-wqy-microhei >/dev/null \
    && rm -rf /var/lib/apt/lists/*

# A virtualenv keeps the image's Python packages apart from the distribution's (PEP 668 bases).
RUN python3 -m venv /opt/lucent

# Dependencies first, from pyproject.toml alone, so editing sources does not reinstall them. The package's
# readme is a placeholder here (the real one comes with the sources): editing README.md must not either.
WORKDIR /src
COPY pyproject.toml ./
RUN mkdir -p analyzer container && touch analyzer/__init__.py container/__init__.py README.md \
    && pip install --no-cache-dir . \
    && pip uninstall -y -q lucent \
    # setuptools' build/ keeps the empty placeholders, newer than the real sources COPY'd next.
    && rm -rf build *.egg-info analyzer container README.md

# Optional extras of the lucent package, comma-separated (LUCENT_EXTRAS=spark, or spark,models), in a layer
# of their own after the common dependencies: the Spark image shares every layer above with the plain one.
# The Spark extra needs a Java runtime: JAVA_PACKAGE from the distribution (Java 17 for Spark 4 on
# Debian bookworm). Slim bases have no man pages folder, which the JRE's package configuration writes into.
ARG LUCENT_EXTRAS=
ARG JAVA_PACKAGE=openjdk-17-jre-headless
RUN if [ -n "${LUCENT_EXTRAS}" ]; then \
      case ",${LUCENT_EXTRAS}," in *,spark,*) \
        mkdir -p /usr/share/man/man1 \
        && apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${JAVA_PACKAGE}" >/dev/null \
        && rm -rf /var/lib/apt/lists/* \
        && java -version ;; \
      esac \
      && mkdir -p analyzer container && touch analyzer/__init__.py container/__init__.py README.md \
      && pip install --no-cache-dir ".[${LUCENT_EXTRAS}]" \
      && pip uninstall -y -q lucent \
      && rm -rf build *.egg-info analyzer container README.md; \
    fi

COPY README.md ./
COPY analyzer ./analyzer
COPY container ./container
RUN pip install --no-cache-dir --no-deps . && rm -rf /src

# The output folders are world-writable (sticky) so the job also runs under the caller's uid.
RUN useradd --create-home --uid 1000 lucent \
    && mkdir -p /opt/ml/processing/input /opt/ml/processing/output /opt/ml/output /opt/ml/model \
    && chown -R lucent /opt/ml \
    && chmod 1777 /opt/ml/processing/output /opt/ml/output
USER lucent
WORKDIR /opt/ml/processing
# `lucent run ARGS`; in the Spark image also the `driver` / `executor` roles of Spark on Kubernetes pods
# (container/entrypoint.py), so it serves as spark.kubernetes.container.image.
ENTRYPOINT ["lucent-image"]
