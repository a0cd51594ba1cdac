"""Entrypoint of the Beat image: `python -m services.beat.main` or `celery -A services.beat.main
beat`.

RedBeat keeps the schedule and each entry's last run in Redis behind a leader lock: a second Beat
started by mistake waits for the lock instead of doubling the schedule, and a restarted Beat resumes
from the stored last runs instead of re-firing or skipping what was due. A broker outage pauses
Beat, it does not end it (`services.beat.scheduler`).

Beat also runs four threads, started by the entrypoint only: the report relay
(`ragcore.query.reports`), the one publisher of the query reports, in the one process that
publishes on a timer anyway, and off the API's cores; and the delivery re-driver
(`ragcore.deliveries.redriver`), which re-drives the waiting deliveries that are due, at the same
interval; the reconciler (`ragcore.tasks.reconciler`), which publishes again what the broker
lost; and the ledger's snapshot (`ragcore.tasks.ledger.snapshot`), which recomputes the recent
window that /metrics and the console's pictures show.
"""

import logging
import sys

from redbeat.schedulers import get_redis

from ragcore import invariants, redis_clients, tracing
from ragcore.broker import broker_client
from ragcore.deliveries import Redriver
from ragcore.logs import configure_logging
from ragcore.query.reports import ReportRelay
from ragcore.settings import get_settings
from ragcore.tasks import ledger
from ragcore.tasks.app import create_app, publish_only
from ragcore.tasks.ledger.snapshot import Snapshotter
from ragcore.tasks.reconciler import Reconciler
from services.beat import schedule
from services.beat.scheduler import OutageTolerantScheduler

log = logging.getLogger(__name__)
settings = get_settings()
redbeat_url, redbeat_options = redis_clients.redbeat_options(settings.redis)
app = create_app("beat")
app.conf.update(
    beat_schedule=schedule.build(settings),
    beat_scheduler=OutageTolerantScheduler,  # RedBeat, riding out broker outages
    # RedBeat's own client: the broker's Redis, with our timeouts (and sentinels, if configured).
    redbeat_redis_url=redbeat_url,
    redbeat_redis_options=redbeat_options,
    redbeat_key_prefix="ragcore:redbeat:",
    redbeat_lock_timeout=30,  # a crashed leader's lock frees within this many seconds
    beat_max_loop_interval=5,  # the leader renews its lock (and checks due entries) this often
)
ledger.connect_publisher_signals()


def main() -> None:
    if "--help" in sys.argv[1:]:  # before the database and Redis: usage only
        print(
            "usage: scheduler [CELERY BEAT OPTIONS]\n\n"
            "Runs the RedBeat schedule and the report relay. "
            "Configured by RAGCORE_* environment variables. Celery's beat options follow.\n",
            flush=True,
        )
        app.start(["beat", "--help"])
        return
    configure_logging("beat", settings.log_level)
    tracing.configure("beat", settings.trace_file)
    try:
        invariants.check(
            settings,
            broker_client(settings.redis),
            service="beat",
            redis_clients={"RedBeat's Redis client (redbeat_redis_options)": get_redis(app)},
        )
    except invariants.InvariantError as exc:
        log.critical("%s", exc)
        sys.exit(str(exc))
    publish_only()  # the relay, re-driver, reconciler and schedule publish; none waits on a result
    threads = [
        ReportRelay(app, settings.beat.report_relay_seconds),
        Redriver(app, settings, settings.beat.report_relay_seconds),
        Reconciler(app, settings),
        Snapshotter(settings.api, settings.redis),
    ]
    for thread in threads:
        thread.start()
    try:
        app.start(["--quiet", "beat", f"--loglevel={settings.log_level}", *sys.argv[1:]])
    finally:
        for thread in threads:
            thread.stop()


if __name__ == "__main__":
    main()
