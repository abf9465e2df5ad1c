# The pod sandbox ("pause") image, from hack/node/pause built as a static binary.
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
