"""The model downloader a ModelCache's download pod runs: ``python -m kubemaas_runtime.fetch``.

Sources: ``hf://ORG/NAME`` (huggingface_hub), ``s3://bucket/prefix`` (obstore) and
``http(s)://`` (a folder with an ``index.json``, or one file). Files are fetched in parallel into
partial files, hashed as they arrive, verified, fsynced and only then renamed; a killed fetch
resumes from the partial files' sizes; a fetch without progress for ``--stall-timeout`` fails
``Stalled`` and is retried with backoff; a full disk is ``DiskFull``; a checksum mismatch is
``ChecksumMismatch`` with both sums. A complete directory carries ``.kubemaas-manifest.json``
(files, sizes, sha256, source, revision, the model's shape), and fetching it again is a no-op.

Layout: options (CLI) · supervisor (attempts, watchdog, retries, report) · worker (one attempt)
· sources/ (http, s3, hf) · transfer (one file) · verify · progress · shape · report · layout.
"""
