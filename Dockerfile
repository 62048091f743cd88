# xserve: serves ./models on port 8080.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY xserve ./xserve
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 xserve
COPY --from=build /install /usr/local
WORKDIR /srv
COPY --chown=xserve:xserve models ./models
RUN mkdir -p explainer_cache audit compliance_reports && chown -R xserve:xserve /srv
USER xserve
# numba caches compiled kernels here (/tmp is writable with a read-only root filesystem)
ENV XSERVE_MODELS_DIR=/srv/models PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba-cache
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health/ready', timeout=2).status != 200)"
CMD ["xserve", "serve", "--host", "0.0.0.0", "--port", "8080"]
