# syntax=docker/dockerfile:1
#
# The adamtune image: the CLI (`adamtune search`, `adamtune worker`, ...) and, because adamtune depends
# on MLflow and installs psycopg, also the `mlflow server` that docker-compose.yml runs.
#
#   docker build -t adamtune .                                   # CUDA build (torch's default Linux wheels)
#   docker build -t adamtune:cpu --build-arg TORCH_VARIANT=cpu . # CPU-only torch, ~5 GB smaller
#   docker build --build-arg TORCH_VARIANT=cu126 .               # a given CUDA build from PyTorch's index
#
# TORCH_VARIANT:
#   cuda   torch from PyPI: on Linux x86_64 these wheels are CUDA builds that bring their CUDA runtime as
#          nvidia-* wheels, so no CUDA base image is needed; the host only needs the NVIDIA driver and the
#          NVIDIA Container Toolkit.
#   cpu    torch from https://download.pytorch.org/whl/cpu
#   cuXYZ  torch from https://download.pytorch.org/whl/cuXYZ (e.g. cu126 for an older driver)

ARG PYTHON_VERSION=3.11

# ---- build: a virtual environment in /opt/venv with torch, the dependencies, then adamtune ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS build

ARG TORCH_VARIANT=cuda
ARG TORCH_SPEC="torch>=2.3"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

# torch first, in its own layer: it is the largest and changes least.
RUN case "$TORCH_VARIANT" in \
      cuda) pip install --no-cache-dir "$TORCH_SPEC" ;; \
      cpu|cu[0-9]*|rocm[0-9]*) pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/$TORCH_VARIANT" "$TORCH_SPEC" ;; \
      *) echo "TORCH_VARIANT must be cuda, cpu, cuXYZ or rocmX.Y, not '$TORCH_VARIANT'" >&2; exit 2 ;; \
    esac

# Then the other dependencies, read from pyproject.toml alone, so that editing the source does not
# reinstall them. torch is excluded: it is already there, from the index chosen above.
COPY pyproject.toml /src/pyproject.toml
COPY docker/requirements.py /tmp/requirements.py
RUN python /tmp/requirements.py /src/pyproject.toml --extra postgres --exclude torch > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt

# Finally adamtune itself; everything it needs is installed, so this layer is small.
COPY README.md /src/README.md
COPY studies /src/studies
COPY adamtune /src/adamtune
RUN pip install --no-cache-dir "/src[postgres]" \
 && python -c "import adamtune, optuna, mlflow, psycopg, torch; print('torch', torch.__version__)"

# ---- runtime: the venv on a clean base, run as an unprivileged user ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

ARG TORCH_VARIANT=cuda
LABEL org.opencontainers.image.title="adamtune" \
      org.opencontainers.image.description="Hyperparameter tuning for the Adam optimizer (Optuna + PyTorch + MLflow)" \
      org.adamtune.torch-variant="${TORCH_VARIANT}"

# NVIDIA_*: what the NVIDIA Container Toolkit mounts into the container when GPUs are requested
# (compute for CUDA, utility for nvidia-smi). They do nothing on a host without GPUs.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    HOME=/home/adamtune \
    ADAMTUNE_DATA_DIR=/data \
    ADAMTUNE_LOCK_DIR=/var/lib/adamtune/locks

# A fixed, non-root uid/gid, and the directories the named volumes mount on, owned by it: Docker copies
# a directory's owner into a new, empty named volume, so the volumes start writable for this user.
RUN groupadd --gid 10001 adamtune \
 && useradd --uid 10001 --gid adamtune --create-home --home-dir /home/adamtune --shell /usr/sbin/nologin adamtune \
 && mkdir -p /work /data /mlartifacts /var/lib/adamtune/locks \
 && chown adamtune:adamtune /work /data /mlartifacts /var/lib/adamtune/locks

COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 docker/entrypoint.py /usr/local/bin/adamtune-entrypoint

USER adamtune:adamtune
WORKDIR /work

# Plain `docker run adamtune search ...` runs the CLI. docker-compose.yml wraps the study and worker
# services in adamtune-entrypoint (wait for the study, claim a GPU), and runs `mlflow server` from here.
ENTRYPOINT ["adamtune"]
CMD ["--help"]
