"""Kubeconfig files for the testbed's identities."""

from __future__ import annotations

from pathlib import Path

import yaml


def write(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubemaas-testbed",
                      "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user,
                   "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "kubemaas-testbed",
                      "context": {"cluster": "kubemaas-testbed", "user": user}}],
        "current-context": "kubemaas-testbed",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def write_token(path: Path, server: str, ca: Path, token: str, user: str) -> Path:
    """A kubeconfig that authenticates with a bearer token (a ServiceAccount's)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubemaas-testbed",
                      "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "kubemaas-testbed", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
