# The runtime image as the real node runs it: built on a local Debian base with
# Python packages from a wheelhouse the host downloaded (no registry and no PyPI
# are reachable from inside a build here). hack/node/build-images assembles the
# build context: wheelhouse/, requirements.txt and kubemaas_runtime/ (copied from
# runtime/). Users with a registry use runtime/Dockerfile instead.
ARG BASE_IMAGE=localhost/kubemaas/debian-base:bookworm
FROM ${BASE_IMAGE}

# Debian's python3 (3.11, what the project supports); the mirror is reachable.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# The wheelhouse is bind-mounted for this one step, so it is in no layer (a COPY would
# leave its 48 MB in the image); pip and setuptools go once they have done their job.
RUN --mount=type=bind,source=.,target=/ctx \
    python3 -m venv /opt/kubemaas \
 && /opt/kubemaas/bin/pip install --no-index --no-cache-dir --find-links /ctx/wheelhouse \
      -r /ctx/requirements.txt \
 && /opt/kubemaas/bin/pip uninstall -y -q pip setuptools \
 && find /opt/kubemaas -name __pycache__ -prune -exec rm -rf {} +

COPY kubemaas_runtime /opt/kubemaas/src/kubemaas_runtime
# `python -m kubemaas_runtime` (the operator's command) finds the venv's python
# first on PATH, and the runtime's sources on PYTHONPATH.
ENV PATH=/opt/kubemaas/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/opt/kubemaas/src \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["python", "-m", "kubemaas_runtime"]
