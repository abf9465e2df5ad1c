"""A language model (format hf) on the real node: what tests/cluster/test_real_node.py and
hack/demo share — the administrator's template that brings the LLM packages in, the
ModelDeployment, and whether this machine can run a real node at all.

The runtime image the real node imports (hack/node/build-images) has the `runtime` extra only;
the opt-in `runtime-llm` image (`--with-llm`, docs/images.md) is 5.5 GB and needs about 16 GB of
free disk to build, more than this shared machine has. So the template mounts this machine's
virtualenv site-packages (torch, transformers, tokenizers, safetensors) read-only from the node
and puts it on PYTHONPATH. Everything else — the image, the runtime's code, the operator's
rendering of format hf, the kubelet's probes — is what a cluster runs.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path
from typing import Any

from . import node as real

TEMPLATE = "llm-host-packages"
TEMPLATES_CONFIGMAP = "kubemaas-templates"
MOUNT = "/opt/llm-packages"


def unavailable() -> str | None:
    """Why no real node can run here (not root, node packages missing), or None."""
    try:
        real._preflight()
    except real.NodeError as err:
        return str(err)
    return None


def host_packages_template(builtin: str) -> str:
    """The built-in Deployment template (its source in `builtin`) plus this virtualenv's
    site-packages, read-only from the node, on PYTHONPATH."""
    packages = str(Path(sysconfig.get_paths()["purelib"]).resolve())
    pieces = {
        "env: {{ p.env | tojson }}":
            'env: {{ (p.env + [{"name": "PYTHONPATH", "value": "' + MOUNT + '"}]) | tojson }}',
        "volumeMounts: {{ p.volume_mounts | tojson }}":
            'volumeMounts: {{ (p.volume_mounts + [{"name": "llm-packages", "mountPath": "'
            + MOUNT + '", "readOnly": true}]) | tojson }}',
        "volumes: {{ p.volumes | tojson }}":
            'volumes: {{ (p.volumes + [{"name": "llm-packages", "hostPath": {"path": "'
            + packages + '", "type": "Directory"}}]) | tojson }}',
    }
    source = builtin
    for old, new in pieces.items():
        if old not in source:
            raise ValueError(f"the built-in template has no {old!r}")
        source = source.replace(old, new)
    return source


def template_patch(source: str) -> str:
    """A merge patch of the templates ConfigMap that adds (only) this template."""
    return json.dumps({"data": {TEMPLATE: source}})


def modeldeployment(name: str, namespace: str, image: str, claim: str,
                    path: str) -> dict[str, Any]:
    """A CPU ModelDeployment of format hf on the real node: the tiny model on `claim`."""
    return {
        "apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"uri": f"pvc://{claim}/{path}", "format": "hf"},
            "runtime": {"image": image, "imagePullPolicy": "Never", "template": TEMPLATE,
                        "llm": {"maxModelLen": 256, "maxNumSeqs": 4, "dtype": "float32",
                                "servedModelName": "tiny",
                                # one torch thread: the CPU is shared (docs/llm.md)
                                "extraArgs": ["--intra-op-threads=1"]},
                        "resources": {"cpu": "500m", "memory": "2Gi"}},
            "scheduling": {"nodeSelector": {real.LABEL: "true"},
                           "tolerations": [real.TOLERATION]},
            "replicas": 1}}
