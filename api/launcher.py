"""`make run`: migrate, then run one Celery worker and the api together; Ctrl-C stops both."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from store.settings import get_settings


def main() -> int:
    settings = get_settings()
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], check=True)
    worker = subprocess.Popen([sys.executable, "-m", "worker"])
    api = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.main:app", "--host", settings.host,
                            "--port", str(settings.port)])
    url = f"http://{settings.host}:{settings.port}"
    print(f"\nregdiff is up at {url} (docs: {url}/docs); REGDIFF_HOME={settings.home.resolve()}\n"
          f"try:  curl -s -X POST {url}/v1/runs -H 'content-type: application/json' \\\n"
          """        -d '{"dataset": "digits", "regularizer": "tv", "lambda": 0.1, "train": {"steps": 200}}'\n""",
          flush=True)
    try:
        while worker.poll() is None and api.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (api, worker):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (api, worker):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
