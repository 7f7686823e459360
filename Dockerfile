# The pipeline image: every component of the compiled Kubeflow / Vertex AI pipeline runs in
# it (`lt4rec pipeline compile --image IMAGE`). From the repository's root:
#
#     docker build -t IMAGE . && docker push IMAGE
#
# Python 3.11 with the verified stack of constraints.txt, installed as `make install` does.
# (The tensorflow/tfx images bring their own Python and pins, not the ones tested here.)
#
# Built on Apache Beam's SDK image of the pinned Beam and Python, so that the same image
# also runs Dataflow's workers (`--sdk_container_image=IMAGE --experiments=use_runner_v2`):
# they then find the project and its whole stack installed. Staging the project with
# `--setup_file` instead would make each worker pip-install it, which fails: tfx 1.16 and
# ml-pipelines-sdk 1.16 declare Requires-Python <3.11. The Beam image's entrypoint (the
# SDK harness) stays; pipeline tasks and training jobs give their own command.
FROM apache/beam_python3.11_sdk:2.59.0

# Keras 2 (tf-keras) in every process of the container, as TFX 1.16 and TF-MOT need;
# tfx 1.16 declares Requires-Python <3.11 although its whole stack has 3.11 wheels.
ENV TF_USE_LEGACY_KERAS=1 \
    PIP_IGNORE_REQUIRES_PYTHON=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# A compiler for the few dependencies published only as source (pyfarmhash, crcmod).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

# The repository lives at /pipeline (pipeline/kubeflow_runner.py's IMAGE_ROOT: the compiled
# spec names /pipeline/pipeline/schema/schema.pbtxt).
WORKDIR /pipeline

# The dependencies first, in their own layer: a change to the code does not reinstall them.
# (The package folders are empty stand-ins here; the real ones are copied below.)
COPY setup.py pyproject.toml constraints.txt README.md ./
RUN python -m pip install --upgrade "pip>=24" \
    && for folder in lt4rec pipeline components models serving logs; do \
         mkdir -p "$folder" && touch "$folder/__init__.py"; done \
    && python -m pip install -c constraints.txt . \
    && python -m pip uninstall -y lt4rec \
    && rm -rf lt4rec pipeline components models serving logs build *.egg-info

# The code, installed in place (editable, as the Makefile does), with the `lt4rec` command.
COPY . .
RUN python -m pip install --no-deps -c constraints.txt -e . \
    && python -c "import lt4rec.pipeline.pipeline, lt4rec.components.mask_search.executor; print('lt4rec imports')"
