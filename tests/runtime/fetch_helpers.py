"""Run ``python -m kubemaas_runtime.fetch`` as a real process and read what it says."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .venvs import MOTO, ensure_venv

REPO = Path(__file__).resolve().parents[2]


class Fetch:
    """A running fetch: stdout JSON lines collected as they come, stderr kept."""

    def __init__(self, args: list[str], env: Mapping[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("AWS_", "HF_"))}
        full_env.update(env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "kubemaas_runtime.fetch", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=full_env, cwd=REPO)
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        self._cond = threading.Condition()
        self._out = threading.Thread(target=self._read_out, daemon=True)
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._out.start()
        self._err.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError as exc:
                raise AssertionError(f"stdout line is not JSON: {line!r}") from exc
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait_event(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 60) -> \
            dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._out.is_alive()):
                    raise AssertionError(f"no such event; got {self.events[-5:]}, "
                                         f"stderr {self.stderr[-2000:]}")
                self._cond.wait(min(left, 0.5))

    def finish(self, timeout: float = 120) -> dict[str, Any]:
        """Wait for the exit; the final report (the last stdout line)."""
        self.proc.wait(timeout)
        self._close()
        assert self.events and self.events[-1]["event"] == "result", \
            f"no final report: {self.events[-3:]}, stderr {self.stderr[-2000:]}"
        return self.events[-1]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._close()

    def _close(self) -> None:
        self._out.join(10)
        self._err.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    @property
    def progress(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "progress"]


def run_fetch(args: list[str], env: Mapping[str, str] | None = None,
              timeout: float = 120) -> tuple[int, dict[str, Any], Fetch]:
    fetch = Fetch(args, env)
    report = fetch.finish(timeout)
    return fetch.proc.returncode, report, fetch


def workers_of(dest: Path) -> list[int]:
    """Pids of worker processes still fetching into ``dest`` (ours: matched by the unique dest)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kubemaas_runtime.fetch.worker" in cmd and any(
                str(dest).encode() in part for part in cmd):
            pids.append(int(proc.name))
    return pids


UPLOAD = """
import json, sys, boto3
from boto3.s3.transfer import TransferConfig
endpoint, spec = sys.argv[1], json.loads(sys.argv[2])
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
multipart = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
single = TransferConfig(multipart_threshold=1 << 40)
for item in spec:
    if item.get("bucket_only"):
        s3.create_bucket(Bucket=item["bucket"])
        continue
    s3.upload_file(item["path"], item["bucket"], item["key"],
                   ExtraArgs={"Metadata": item.get("metadata", {})},
                   Config=multipart if item.get("multipart") else single)
"""


def s3_upload(python: Path, endpoint: str, items: list[dict[str, Any]]) -> None:
    """Create buckets and upload files with moto's venv's boto3 (the test's client, not ours)."""
    subprocess.run([str(python), "-c", UPLOAD, endpoint, json.dumps(items)], check=True,
                   timeout=120)



@contextmanager
def moto_server(log: Path | None = None) -> Iterator[tuple[str, Path]]:
    """moto's S3-compatible server (Flask/werkzeug) on 127.0.0.1, from its cached venv, until
    the block ends: (its endpoint, the venv's python for s3_upload). With ``log``, its output
    (the access log) goes there."""
    python = ensure_venv("moto", MOTO)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [str(python), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    if log is None:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    said = f": {log.read_text()[-2000:]}" if log is not None else ""
                    raise RuntimeError(f"moto server did not start{said}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", python
    finally:
        proc.terminate()
        proc.wait(10)

def plant_partial(dest: Path, rel: str, data: bytes, source: str,
                  revision: str | None = None, etag: str | None = None) -> Path:
    """What a killed fetch of ``source`` leaves: a partial file, the ETag its bytes came with
    (if given), and the record of whose bytes they are (another source or revision discards
    them)."""
    work = dest / ".kubemaas-fetch"
    partial = work / "partial" / (rel + ".part")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(data)
    if etag is not None:
        (work / "validators" / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / "validators" / rel).write_text(etag)
    (work / "source.json").write_text(json.dumps({"source": source, "revision": revision}))
    return partial
