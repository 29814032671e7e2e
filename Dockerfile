# One image for every QueueChat role: gateway, worker, flower (chosen by the compose command).
FROM python:3.11-slim

# CPU torch by default.  For CUDA: --build-arg TORCH_SPEC=torch (with a CUDA wheel index in
# TORCH_INDEX_URL if your platform's default wheel is CPU-only).
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY gateway ./gateway
COPY workers ./workers
COPY adapters ./adapters
COPY queuechat ./queuechat
COPY bench ./bench
COPY scripts ./scripts
COPY models.yaml ./
RUN pip install . && python scripts/fetch_models.py

RUN useradd --create-home queuechat && mkdir -p /home/queuechat/.cache/queuechat \
    && chown -R queuechat /home/queuechat /app/models
USER queuechat
EXPOSE 8000 5555
CMD ["python", "-m", "gateway", "--host", "0.0.0.0", "--port", "8000"]
