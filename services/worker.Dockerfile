# A worker image, one per queue (`sync`, `notifications`, `cleanup`, `user`): its own pex (that
# service + libs), nothing of the other services. The four images share this file; each BUILD
# passes its QUEUE.
# BASE_IMAGE: CPython 3.11 as python3 on Debian; deploy/images/base-image makes the default
# locally (no registry needed); python:3.11-slim works too.
ARG BASE_IMAGE=localhost/debian-py311:bookworm
# The release (tags and labels come from it, in BUILD); declared here so `docker build` consumes it.
ARG VERSION=dev

# The pex becomes a venv once, here, byte-compiled, at the fixed path /opt/app: a container starts
# without unpacking anything, as a non-root user, on a read-only root filesystem.
FROM ${BASE_IMAGE} AS install
# The queue whose worker this image runs: the service folder its pex was built in.
ARG QUEUE
COPY services.${QUEUE}/worker.pex /tmp/worker.pex
RUN PEX_ROOT=/opt/pex PEX_INTERPRETER=1 python3 /tmp/worker.pex -c 'import os, sys; os.symlink(sys.prefix, "/opt/app")' \
 && python3 -m compileall -q -j 0 /opt/pex/installed_wheels /opt/app/lib

FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin ragcore
COPY --from=install /opt /opt
USER 10001:10001
ENV RAGCORE_ENVIRONMENT=prod
# Healthy = consuming: it answers a ping and its queue does not wait on it (ragcore.worker.health).
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
  CMD ["/opt/app/pex", "--healthcheck"]
# Extra arguments go to `celery worker` (e.g. --concurrency=8); the queue is fixed by the image.
ENTRYPOINT ["/opt/app/pex"]
