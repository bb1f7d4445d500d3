# signflow's training image: the pipeline and its scheduler (`signflow schedule`,
# the training server). Models are served from TF Serving's own image
# (tensorflow/serving); see docker-compose.yml and deploy/k8s/.
#
#   docker build -t signflow-training .
#   docker run --rm --init -v "$PWD/data:/app/data" -v signflow-pipeline-root:/app/pipeline_root \
#     -v "$PWD/serving_model/xception:/app/serving_model/xception" signflow-training
#
# pipeline_root gets a volume of its own, not the host's folder: ML Metadata
# records artifact paths as the container sees them (/app/...).
#
# Python 3.10 (TFX 1.16 supports 3.9-3.10 only) on Debian 12 (glibc 2.36), where
# requirements.lock was resolved: its wheels need no newer glibc.
ARG PYTHON_IMAGE=python:3.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# crcmod (for Apache Beam) and pyfarmhash (for TFDV) publish no Linux wheels, so pip
# compiles them; the compilers stay in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The same steps as .ci/make-venv, so the image holds the environment the tests ran in.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --upgrade "pip==24.3.1" "setuptools<76" wheel
COPY requirements.lock /tmp/requirements.lock
# The lock includes kfp-pipeline-spec: the same image runs every step of the
# Kubeflow / Vertex AI pipeline, and TFX's container entrypoint there imports it.
RUN /opt/venv/bin/python -m pip install -r /tmp/requirements.lock

FROM ${PYTHON_IMAGE}
# The venv's interpreter links to this base image's /usr/local/bin/python3.10,
# which is why both stages start from the same image.
COPY --from=build /opt/venv /opt/venv
# TF_USE_LEGACY_KERAS must be set before anything imports TensorFlow (TFX 1.16
# needs Keras 2); PYTHONPATH lets Beam's workers import the pipeline's modules by
# name. PYTHONHASHSEED and the TensorFlow log level as the Makefile sets them.
ENV PATH=/opt/venv/bin:$PATH \
    TF_USE_LEGACY_KERAS=1 \
    PYTHONPATH=/app \
    PYTHONHASHSEED=0 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1
# The pipeline resolves its relative paths (data/inbox, pipeline_root,
# serving_model) against the working directory: the repository root.
WORKDIR /app
COPY . /app

ENTRYPOINT ["python", "-m", "pipeline.cli"]
CMD ["schedule", "--interval", "6h"]
