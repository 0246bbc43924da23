# One image for the api, the worker and the migrate job (the command differs).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY worker worker
COPY models models
COPY store store
COPY service service
COPY migrations migrations
COPY alembic.ini ./
RUN pip install . && useradd --create-home regdiff && mkdir -p /var/lib/regdiff && chown regdiff /var/lib/regdiff
USER regdiff
# the api listens on all interfaces in a container: keys are required (see README, Security)
ENV REGDIFF_HOME=/var/lib/regdiff REGDIFF_HOST=0.0.0.0
EXPOSE 8000
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
