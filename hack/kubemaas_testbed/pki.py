"""The testbed's certificates, made with the openssl command line."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "3650"


@dataclass(frozen=True)
class Identity:
    """A client identity: common name is the user, organisation the group."""

    file_stem: str
    user: str
    group: str | None = None


ADMIN = Identity("admin", "kubemaas-admin", "system:masters")
CONTROLLER_MANAGER = Identity("controller-manager", "system:kube-controller-manager")
SCHEDULER = Identity("scheduler", "system:kube-scheduler")
# kwok writes the status of every node and pod it simulates, as many kubelets
# would; kwokctl gives it the admin identity, and so do we.
KWOK = Identity("kwok", "kwok-controller", "system:masters")

CLIENTS = (ADMIN, CONTROLLER_MANAGER, SCHEDULER, KWOK)
# The aggregation layer: the apiserver proxies requests for an aggregated API (KEDA's
# external.metrics.k8s.io) with this client certificate, from a CA of its own (the "front
# proxy" CA), and the extension server trusts the X-Remote-* headers only from this name.
FRONT_PROXY_DIR = "front-proxy"
FRONT_PROXY_CLIENT = Identity("front-proxy-client", "front-proxy-client")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _subject(identity: Identity) -> str:
    return f"/CN={identity.user}" + (f"/O={identity.group}" if identity.group else "")


def make_ca(pki: Path) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", DAYS, "-subj", "/CN=kubemaas-testbed-ca", cwd=pki)


def sign(pki: Path, stem: str, subject: str, extensions: str) -> None:
    """Make stem.key and a CA-signed stem.crt with the given v3 extensions."""
    (pki / f"{stem}.ext").write_text(extensions)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{stem}.key", "-out",
             f"{stem}.csr", "-subj", subject, cwd=pki)
    _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{stem}.crt", "-days", DAYS, "-extfile",
             f"{stem}.ext", cwd=pki)


def make_client(pki: Path, identity: Identity) -> None:
    sign(pki, identity.file_stem, _subject(identity),
         "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n")


def make_serving(pki: Path, stem: str, common_name: str, sans: list[str]) -> None:
    sign(pki, stem, f"/CN={common_name}",
         "keyUsage=critical,digitalSignature,keyEncipherment\n"
         "extendedKeyUsage=serverAuth\n"
         f"subjectAltName={','.join(sans)}\n")


def make_all(pki: Path, service_ip: str) -> None:
    """Every certificate and key the control plane needs, in one directory."""
    pki.mkdir(parents=True, exist_ok=True)
    make_ca(pki)
    make_serving(pki, "apiserver", "kube-apiserver", [
        "IP:127.0.0.1", f"IP:{service_ip}", "DNS:localhost", "DNS:kubernetes",
        "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
    ])
    for identity in CLIENTS:
        make_client(pki, identity)
    front = pki / FRONT_PROXY_DIR
    front.mkdir(exist_ok=True)
    make_ca(front)
    make_client(front, FRONT_PROXY_CLIENT)
    # The service-account token signing pair.
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def aggregation_flags(pki: Path) -> list[str]:
    """kube-apiserver's aggregation-layer flags (make_all made the files): the front-proxy CA and
    the client certificate it proxies with, and the headers that carry the user."""
    front = pki / FRONT_PROXY_DIR
    stem = FRONT_PROXY_CLIENT.file_stem
    return [
        f"--requestheader-client-ca-file={front / 'ca.crt'}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT.user}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={front / f'{stem}.crt'}",
        f"--proxy-client-key-file={front / f'{stem}.key'}",
    ]
