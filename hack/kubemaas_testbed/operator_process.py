"""The operator as a real process under its own ServiceAccount, for the benchmarks.

A token of `kubemaas-operator` in `kubemaas-system` (the RBAC the chart installs) goes into a
kubeconfig beside the admin one; the operator runs from this checkout with that identity, its
health endpoint on a free 127.0.0.1 port, and its log in the work directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from . import binaries
from .cluster import free_port

NAMESPACE = "kubemaas-system"
REPO = Path(__file__).resolve().parents[2]


class OperatorProcess:
    def __init__(self, admin_kubeconfig: Path, workdir: Path,
                 env: Mapping[str, str] | None = None) -> None:
        token = subprocess.run(
            [binaries.kubectl(), f"--kubeconfig={admin_kubeconfig}", "-n", NAMESPACE, "create",
             "token", "kubemaas-operator", "--duration=2h"],
            capture_output=True, text=True, check=True).stdout.strip()
        # the admin kubeconfig's cluster entry as it is (CA by path or inline), the token as user
        cluster = yaml.safe_load(admin_kubeconfig.read_text())["clusters"][0]
        kubeconfig = workdir / "operator.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
            "users": [{"name": "op", "user": {"token": token}}],
            "contexts": [{"name": "op", "context": {"cluster": cluster["name"], "user": "op"}}],
            "current-context": "op"}))
        self.port = free_port()
        self.log = workdir / "operator.log"
        full_env = {**os.environ, **(env or {}), "KUBECONFIG": str(kubeconfig),
                    "KUBEMAAS_OPERATOR_HEALTH_PORT": str(self.port),
                    "KUBEMAAS_OPERATOR_NAMESPACE": NAMESPACE}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "kubemaas_operator"],
                                         env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=REPO)
        deadline = time.monotonic() + 30
        while self.health() is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the operator did not start; see {self.log}")
            time.sleep(0.2)

    def health(self) -> dict[str, Any] | None:
        """The operator's /healthz document, or None while it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                        timeout=2) as r:
                return dict(json.loads(r.read()))
        except OSError:
            return None

    def writes(self) -> int:
        """API writes the operator has made (its own counter)."""
        state = self.health()
        assert state is not None
        return int(state["apiWrites"])

    def memory(self) -> dict[str, int]:
        """Peak and current resident memory, kB."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        out: dict[str, int] = {}
        for key in ("VmHWM", "VmRSS"):
            found = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
            assert found is not None, f"no {key} in /proc/{self.proc.pid}/status"
            out[key] = int(found.group(1))
        return out

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
