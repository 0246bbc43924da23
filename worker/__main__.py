"""`python -m worker` (`make worker`): one more worker on the current REGDIFF_* configuration.

One process, one task at a time (solo pool): a GPU runs one training at a time, and CUDA
is never initialised in the parent of a fork. Capacity grows by starting more workers.
"""

from __future__ import annotations

import sys

from store.settings import get_settings
from worker.metrics import serve as serve_metrics
from worker.tasks import app


def main() -> None:
    settings = get_settings()
    serve_metrics(settings.worker_metrics_host, settings.worker_metrics_port)
    queues = f"{settings.queue},{settings.sample_queue}"  # training, and sample jobs on their own queue
    app.worker_main(["worker", "--pool", "solo", "--concurrency", "1", "-Q", queues, "--loglevel", "INFO",
                     *sys.argv[1:]])


if __name__ == "__main__":
    main()
