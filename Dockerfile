FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY hub hub
COPY core core
COPY connectors connectors
COPY worker worker
RUN pip install --no-cache-dir .
ENV HUB_DATA_DIR=/data
EXPOSE 8000
CMD ["hub", "serve", "--host", "0.0.0.0", "--port", "8000"]
