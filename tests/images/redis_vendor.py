"""The Redis of the image smoke tests, as a pytest-celery custom vendor.

No image can be pulled here, so pytest-celery's `redis:latest` is replaced by one built FROM the
project's own Debian base image (tests/images/redis/Dockerfile). It listens on a free port of the
host's network (see host_network), so the worker containers and the test reach it at
127.0.0.1:PORT alike.
"""

from __future__ import annotations

import redis
from pytest_celery import RedisContainer

from tests.images.host_network import HostNetworkContainer

#: The tag the vendor's image is built under, on the engine the tests run against.
REDIS_IMAGE = "ragcore-test/redis:bookworm"


class BaseImageRedisContainer(HostNetworkContainer, RedisContainer):  # type: ignore[misc]
    @classmethod
    def command(cls, *args: str, **kwargs: object) -> list[str]:
        # Only this host's own processes reach it: the host's network is shared, not private.
        return [*super().command(), "--bind", "127.0.0.1", *args]

    @classmethod
    def image(cls) -> str:
        return REDIS_IMAGE

    @classmethod
    def ports(cls) -> dict[str, int | None]:
        return {}  # the host's network: nothing to publish

    @property
    def port(self) -> int:
        """The port its command names (`--port N`, chosen free when the container was made)."""
        args = list(self.attrs["Args"])
        return int(args[args.index("--port") + 1])

    @property
    def url(self) -> str:
        return f"{self.prefix()}127.0.0.1:{self.port}/{self.vhost}"

    @property
    def host_url(self) -> str:
        return self.url  # the host and the containers share one network

    def serving(self) -> bool:
        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False
