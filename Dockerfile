# One image for every service: the `search` command with its dependencies.
# The PyPI torch wheel carries its own CUDA libraries; the host needs only the NVIDIA driver
# and the container toolkit to hand GPUs to the worker containers.
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY search search
COPY objectives objectives
COPY studies studies
# Editable: the package stays in /app beside studies/, where `search` finds its default spec
# (a plain install would look for site-packages/studies/, which no wheel holds).
RUN pip install --no-cache-dir -e .
ENTRYPOINT ["search"]
