# One image for every service: the `search` command with its dependencies.
# The PyPI torch wheel carries its own CUDA libraries; the host needs only the NVIDIA driver
# and the container toolkit to hand GPUs to the worker containers.
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY search search
COPY objectives objectives
COPY studies studies
RUN pip install --no-cache-dir .
ENTRYPOINT ["search"]
