"""Readiness of a pytest-celery container on the host's network.

The private Docker engine of deploy/images/build-and-check runs without a bridge (no iptables), so
every container here shares the host's network: it has no IP address of its own and publishes no
port. pytest-docker-tools' `Container.ready()` waits for an IP address on each network, which
never comes there; this readiness asks only that the container runs and is ready by its own
standard (pytest-celery's ready prompt in its logs, and whatever a subclass adds).
"""

from __future__ import annotations

from pytest_celery import CeleryTestContainer
from pytest_docker_tools.exceptions import ContainerFailed  # pants: no-infer-dep (pytest-celery's)


class HostNetworkContainer(CeleryTestContainer):  # type: ignore[misc]  # pytest-celery: untyped
    def ready(self) -> bool:
        self.reload()
        if self.status == "exited":
            raise ContainerFailed(self, f"container {self.name} exited before it was ready")
        return self.status == "running" and bool(self._wait_ready()) and self.serving()

    def serving(self) -> bool:
        """Whether it serves now (after a restart its logs still hold the first ready prompt)."""
        return True
