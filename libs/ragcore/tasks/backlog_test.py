from ragcore.tasks.backlog import Backlog


def test_updates_of_one_task_merge_in_order_and_tasks_keep_their_first_order() -> None:
    backlog = Backlog()
    backlog.add([("a", {"state": "STARTED", "worker": "w"}), ("b", {"state": "STARTED"})])
    backlog.add([("a", {"state": "SUCCESS"})])
    assert backlog.items() == [
        ("a", {"state": "SUCCESS", "worker": "w"}),
        ("b", {"state": "STARTED"}),
    ]


def test_past_its_limit_the_oldest_tasks_are_dropped_and_counted() -> None:
    backlog = Backlog(limit=2)
    backlog.add([("a", {}), ("b", {}), ("c", {})])
    assert [task_id for task_id, _ in backlog.items()] == ["b", "c"]
    assert backlog.clear() == (2, 1)
    assert len(backlog) == 0 and backlog.dropped == 0
