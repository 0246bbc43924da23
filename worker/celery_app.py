"""The Celery app: configuration only, light to import (the api imports it to enqueue).

Settings for long GPU tasks: late acks and one reserved task per process, so a message
is only gone once its run is done; but correctness never rests on the broker: leases in
the database decide who owns a run, and the reconciler re-enqueues what a broker lost.
"""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import create_engine, text

from store.settings import get_settings

log = logging.getLogger(__name__)
TRAIN_TASK = "regdiff.train_run"
SAMPLE_TASK = "regdiff.sample"


def _transport_options(url: str) -> dict:
    if url.startswith("sqla+"):
        # kombu hands these to create_engine: wait on SQLite's lock rather than fail.
        return {"connect_args": {"timeout": 30}}
    # Redis redelivers unacked messages after this; leases make a redelivery harmless.
    return {"visibility_timeout": 12 * 3600}


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("regdiff", broker=settings.resolved_broker_url)
    app.conf.update(
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options=_transport_options(settings.resolved_broker_url),
        imports=("worker.tasks",),
    )
    return app


app = make_celery()


def enqueue_train(run_id: str) -> None:
    app.send_task(TRAIN_TASK, args=[run_id], queue=get_settings().queue)


def enqueue_sample(sample_id: str) -> None:
    app.send_task(SAMPLE_TASK, args=[sample_id], queue=get_settings().sample_queue)


def waiting_messages() -> int | None:
    """Messages waiting in the job queue (sent, not yet delivered to a worker); None when the
    broker cannot be asked. The reconciler re-enqueues only what this count proves missing."""
    settings = get_settings()
    try:
        with app.connection_for_read() as conn:
            return sum(_queue_length(conn, queue) for queue in (settings.queue, settings.sample_queue))
    except Exception:
        log.warning("the broker cannot be asked for its queue length", exc_info=True)
        return None


def _queue_length(conn, queue: str) -> int:
    try:
        return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
    except conn.channel_errors:  # Redis drops an empty queue's key: nothing is waiting
        return 0


def prune_consumed() -> int:
    """Delete the messages the embedded SQLite broker has delivered: kombu's SQLAlchemy
    transport keeps them (visible=0) forever, so broker.db would only grow. A delivered
    message lives on in its worker's memory until the ack, so the row is not needed."""
    url = get_settings().resolved_broker_url
    if not url.startswith("sqla+"):
        return 0
    engine = create_engine(url.removeprefix("sqla+"), connect_args={"timeout": 30})
    try:
        with engine.begin() as conn:
            return conn.execute(text("DELETE FROM kombu_message WHERE visible = 0")).rowcount
    except Exception:  # no table yet (nothing was ever sent), or the file is busy: next pass
        log.debug("broker prune skipped", exc_info=True)
        return 0
    finally:
        engine.dispose()
