# Lucent processing-job image. Runs `lucent run` on /opt/ml/processing with no arguments,
# as SageMaker Processing starts the Clarify container.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lucent/bin:$PATH

# A virtualenv keeps the image's Python packages apart from the distribution's (PEP 668 bases).
RUN python3 -m venv /opt/lucent

# Dependencies first, from pyproject.toml alone, so editing sources does not reinstall them.
WORKDIR /src
COPY pyproject.toml README.md ./
RUN mkdir -p analyzer container && touch analyzer/__init__.py container/__init__.py \
    && pip install --no-cache-dir . \
    && pip uninstall -y lucent

COPY analyzer ./analyzer
COPY container ./container
RUN pip install --no-cache-dir --no-deps . && rm -rf /src

RUN useradd --create-home --uid 1000 lucent \
    && mkdir -p /opt/ml/processing/input /opt/ml/processing/output /opt/ml/output \
    && chown -R lucent /opt/ml
USER lucent
WORKDIR /opt/ml/processing
ENTRYPOINT ["lucent", "run"]
