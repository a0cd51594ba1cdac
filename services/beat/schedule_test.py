"""Beat's schedule: exactly the five entries of SPEC §2 and our extensions, on the right queues and
times."""

from celery.schedules import crontab

from ragcore.settings import BeatSettings, Settings
from services.beat.schedule import build, period_seconds


def test_schedule_holds_exactly_the_five_entries_and_the_extensions_with_queues_and_times() -> None:
    entries = build(Settings(timezone="UTC"))
    expected = {
        "reset_all_daily_limits": ("user", "0 0 * * *"),
        "cleanup_old_cache": ("cleanup", "0 */6 * * *"),
        "cleanup_query_cache": ("cleanup", "0 2 * * *"),
        "process_sync_queue": ("sync", "*/5 * * * *"),
        "send_usage_statistics": ("notifications", "0 * * * *"),
        "apply_retention": ("cleanup", "30 3 * * *"),  # extension: contracts.EXTENSIONS
    }
    assert set(entries) == set(expected)
    for name, (queue, cron) in expected.items():
        entry = entries[name]
        minute, hour, dom, month, dow = cron.split()
        assert entry["task"] == name
        assert entry["options"]["queue"] == queue
        assert entry["schedule"] == crontab(minute, hour, dow, dom, month)


def test_every_entry_expires_before_its_next_run() -> None:
    for entry in build(Settings()).values():
        assert 0 < entry["options"]["expires"] < period_seconds(entry["schedule"])


def test_interval_schedules_are_seconds() -> None:
    entries = build(Settings(beat=BeatSettings(schedule={"process_sync_queue": "2"})))
    assert period_seconds(entries["process_sync_queue"]["schedule"]) == 2
