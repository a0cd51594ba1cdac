"""pytest-celery's setup for the image smoke tests: a worker image (each of the four, one per test)
against a Redis from the project's base image, as broker and result backend.

Every container runs on the host's network (see host_network). Run by deploy/images/build-and-check
once it built the images, on its private engine (DOCKER_HOST); see BUILD.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_celery import (
    REDIS_CONTAINER_TIMEOUT,
    CeleryBackendCluster,
    CeleryBrokerCluster,
    CeleryTestSetup,
    RedisTestBackend,
    RedisTestBroker,
)

# pytest-docker-tools comes with pytest-celery (which runs its containers through it).
from pytest_docker_tools import build, container, fxtr, image  # pants: no-infer-dep

from ragcore.db import migrate
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import free_port
from ragcore_dev.servers import postgres_database
from tests.images.redis_vendor import REDIS_IMAGE, BaseImageRedisContainer
from tests.images.worker_vendor import (
    WORKER_CONTAINERS,
    RagcoreTestSetup,
    RagcoreTestWorker,
    RagcoreWorkerContainer,
)

#: A worker image starts in seconds; a loaded CI machine (2 cores, several builds) may take longer.
WORKER_START_SECONDS = 180

ragcore_redis_image = build(
    path=str(Path(__file__).parent / "redis"),
    tag=REDIS_IMAGE,
    buildargs={"BASE_IMAGE": os.environ.get("BASE_IMAGE", "localhost/debian-py311:bookworm")},
    network_mode="host",  # apt-get reaches Debian's mirror: the engine has no bridge
)


@pytest.fixture(scope="session")
def ragcore_database_url() -> Iterator[str]:
    """What production gives the workers: a PostgreSQL database the migration job brought to head
    (a deployable refuses a database behind its code, and prod refuses SQLite)."""
    with postgres_database() as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture
def default_redis_broker_cls() -> type[BaseImageRedisContainer]:
    return BaseImageRedisContainer


@pytest.fixture
def default_redis_broker_command(
    default_redis_broker_cls: type[BaseImageRedisContainer],
) -> list[str]:
    return default_redis_broker_cls.command("--port", str(free_port()))


default_redis_broker = container(
    image="{ragcore_redis_image.id}",
    network="host",
    command=fxtr("default_redis_broker_command"),
    wrapper_class=BaseImageRedisContainer,
    timeout=REDIS_CONTAINER_TIMEOUT,
)


@pytest.fixture
def celery_broker_cluster(celery_redis_broker: RedisTestBroker) -> Iterator[CeleryBrokerCluster]:
    cluster = CeleryBrokerCluster(celery_redis_broker)
    yield cluster
    cluster.teardown()


@pytest.fixture
def celery_backend_cluster(
    default_redis_broker: BaseImageRedisContainer,
) -> Iterator[CeleryBackendCluster]:
    # One Redis is broker and result backend, as RAGCORE_REDIS_URL makes it in production: a
    # broker restart is a backend restart too.
    backend = RedisTestBackend(default_redis_broker)
    cluster = CeleryBackendCluster(backend)
    yield cluster
    backend.teardown()
    cluster.teardown()


@pytest.fixture
def celery_setup_cls() -> type[CeleryTestSetup]:
    return RagcoreTestSetup


def _worker_container(cls: type[RagcoreWorkerContainer]) -> Any:
    def environment(
        celery_worker_cluster_config: dict[str, Any], ragcore_database_url: str
    ) -> dict[str, str]:
        return cls.initial_env(
            celery_worker_cluster_config, {"RAGCORE_DATABASE_URL": ragcore_database_url}
        )

    return container(
        image=f"{{ragcore_{cls.queue.value}_worker_image.id}}",
        network="host",
        environment=environment,
        # as production runs it: read-only root, the image's non-root USER, a writable /tmp
        read_only=True,
        tmpfs={"/tmp": "rw"},
        wrapper_class=cls,
        timeout=WORKER_START_SECONDS,
    )


# Per queue, pytest-docker-tools fixtures: the image as built (never pulled), and its container.
for _queue, _cls in WORKER_CONTAINERS.items():
    globals()[f"ragcore_{_queue.value}_worker_image"] = image(name=_cls.image())
    globals()[f"ragcore_{_queue.value}_worker_container"] = _worker_container(_cls)


@pytest.fixture(params=list(Queue), ids=lambda queue: queue.value)
def celery_worker(
    request: pytest.FixtureRequest, celery_setup_app: Any
) -> Iterator[RagcoreTestWorker]:
    """Each worker image in turn, as pytest-celery's own `celery_worker` parametrizes its
    workers."""
    queue: Queue = request.param
    worker = RagcoreTestWorker(
        request.getfixturevalue(f"ragcore_{queue.value}_worker_container"), app=celery_setup_app
    )
    yield worker
    worker.teardown()
