# What runtime/Dockerfile expects of its PYTHON_IMAGE (python:3.11-slim-bookworm for users):
# Python 3.11 with venv and pip's bootstrap, `python` on PATH, useradd. Built on the local
# Debian base by hack/node/build-images, since no image can be pulled here.
ARG BASE_IMAGE=localhost/kubemaas/debian-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && ln -s /usr/bin/python3 /usr/local/bin/python
CMD ["python3"]
