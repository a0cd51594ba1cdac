"""The four worker images as pytest-celery workers: each image exactly as `./pants package` builds
it, configured only by the `RAGCORE_*` environment production gives it."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import celery
from celery import Celery
from pytest_celery import CeleryTestSetup, CeleryTestWorker, CeleryWorkerContainer

from ragcore.settings import RedisSettings, Settings
from ragcore.tasks.app import create_app
from ragcore.tasks.contracts import Queue
from tests.images.host_network import HostNetworkContainer

#: The release under test: build-and-check exports it (./VERSION); Pants tags `latest` too.
VERSION = os.environ.get("VERSION", "latest")

#: What production gives every worker, beyond its Redis and its database (conftest's
#: `ragcore_database_url`): a read-only root with Qdrant's files in /tmp, and the prod settings'
#: refusal of short API keys answered with a long placeholder.
PROD_ENV = {
    "RAGCORE_API_KEYS": '{"images-test-admin-key-of-32-or-more-chars": "admin"}',
    "RAGCORE_QDRANT_PATH": "/tmp/qdrant",
    # INFO and the task lifecycle: the tests read "ready." and each task's id in the logs.
    "RAGCORE_LOG_LEVEL": "INFO",
    "RAGCORE_LOG_TASK_LIFECYCLE": "true",
}


class RagcoreWorkerContainer(HostNetworkContainer, CeleryWorkerContainer):  # type: ignore[misc]
    """A worker image; a subclass per queue names which."""

    queue: ClassVar[Queue]

    @classmethod
    def image(cls) -> str:
        return f"ragcore/worker-{cls.queue.value}:{VERSION}"

    @classmethod
    def command(cls, *args: str, **kwargs: Any) -> list[str]:
        # As shipped: the image's ENTRYPOINT fixes the queue; extra arguments go to `celery worker`.
        return list(args)

    @classmethod
    def version(cls) -> str:
        return str(celery.__version__)  # one lockfile: the image's Celery is this one

    @classmethod
    def worker_name(cls) -> str:
        return cls.queue.value  # run_worker names the node QUEUE@%h

    @classmethod
    def worker_queue(cls) -> str:
        return cls.queue.value

    @classmethod
    def initial_env(
        cls, celery_worker_cluster_config: dict[str, Any], initial: dict[str, str] | None = None
    ) -> dict[str, str]:
        broker = celery_worker_cluster_config["celery_broker_cluster_config"]["urls"][0]
        backend = celery_worker_cluster_config["celery_backend_cluster_config"]["urls"][0]
        return {
            **PROD_ENV,
            "RAGCORE_REDIS_URL": broker,
            "RAGCORE_RESULT_BACKEND_URL": backend,
            **(initial or {}),
        }


class SyncWorkerContainer(RagcoreWorkerContainer):
    queue = Queue.SYNC


class NotificationsWorkerContainer(RagcoreWorkerContainer):
    queue = Queue.NOTIFICATIONS


class CleanupWorkerContainer(RagcoreWorkerContainer):
    queue = Queue.CLEANUP


class UserWorkerContainer(RagcoreWorkerContainer):
    queue = Queue.USER


WORKER_CONTAINERS: dict[Queue, type[RagcoreWorkerContainer]] = {
    c.queue: c
    for c in (
        SyncWorkerContainer,
        NotificationsWorkerContainer,
        CleanupWorkerContainer,
        UserWorkerContainer,
    )
}


class RagcoreTestWorker(CeleryTestWorker):  # type: ignore[misc]  # pytest-celery: untyped
    def hostname(self) -> str:
        # pytest-celery assumes NAME@<container id>; on the host's network %h is the host's name.
        return f"{self.worker_name}@{self.container.attrs['Config']['Hostname']}"


class RagcoreTestSetup(CeleryTestSetup):  # type: ignore[misc]  # pytest-celery: untyped
    @classmethod
    def create_setup_app(
        cls, celery_setup_config: dict[str, str], celery_setup_app_name: str
    ) -> Celery:
        """The tests talk to the workers through the app every deployable uses (routes by task
        name, JSON, result_extended), on the setup's Redis."""
        settings = Settings(
            redis=RedisSettings(
                url=celery_setup_config["broker_url"],
                result_backend_url=celery_setup_config["result_backend"],
            )
        )
        return create_app(celery_setup_app_name, settings)
