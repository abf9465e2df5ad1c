"""Language models against the real control plane and kwok's GPU nodes: the CRD's CEL rules
refuse what no engine can serve; an 8B-shaped `hf` model with engine vllm and gpu.count auto
lands on the number of GPUs the sizing says, with vLLM's arguments and probes in the
Deployment; a 70B-shaped one gets the tensor-parallel degree the sizing picks; a 405B-shaped one
is refused at once with the numbers in the Reason column."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_operator.api import parse_spec
from kubemaas_operator.scheduling import NodeInfo
from kubemaas_operator.sizing import gpu_types, size_gpus
from tests.cluster.conftest import Operator
from tests.cluster.test_operator import model_store, node_products, pod_nodes, wait_phase
from tests.cluster.test_reasons import row_where, rows
from tests.conftest import Kube, delete_namespace_and_its_pods
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "llm-8b-vllm.yaml"
SHAPE_70B = {"architecture": "LlamaForCausalLM", "parameters": 70_553_706_496,
             "numLayers": 80, "hiddenSize": 8192, "numAttentionHeads": 64,
             "numKeyValueHeads": 8, "headDim": 128, "maxPositionEmbeddings": 8192,
             "dtype": "bfloat16"}
SHAPE_405B = {"architecture": "LlamaForCausalLM", "parameters": 405_853_388_800,
              "numLayers": 126, "hiddenSize": 16384, "numAttentionHeads": 128,
              "numKeyValueHeads": 8, "headDim": 128, "maxPositionEmbeddings": 131072,
              "dtype": "bfloat16"}


def llm(name: str, shape: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"uri": "pvc://model-store/llm", "format": "hf",
                                      "shape": shape},
                            "runtime": {"engine": "vllm", "llm": {"maxModelLen": 8192}},
                            "gpu": {"count": "auto"}}
    body.update(spec)
    return {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name}, "spec": body}


def sized_as_the_operator_would(kube: Kube, md: dict[str, Any]) -> tuple[int, tuple[str, ...]]:
    """GPU count and products the sizing gives for `md` on this cluster's nodes (read back)."""
    nodes = json.loads(kube.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    infos = [NodeInfo(name=n["metadata"]["name"], labels=n["metadata"].get("labels") or {},
                      allocatable={k: int(v) for k, v in n["status"]["allocatable"].items()
                                   if k.startswith("nvidia.com/")}) for n in nodes]
    spec = size_gpus(parse_spec(md["spec"]), gpu_types(infos))
    assert spec.gpu is not None and spec.gpu.sizing is not None and not spec.gpu.sizing.reason
    return spec.gpu.count, spec.gpu.products


@pytest.fixture
def llm_ns(kube: Kube, namespace: str, operator: Operator) -> Iterator[str]:
    """A namespace with the model-store PVC; its GPU pods are gone before the next test."""
    kube.kubectl("apply", "-f", "-", input=model_store(namespace))
    yield namespace
    delete_namespace_and_its_pods(kube, namespace)
    kube.kubectl("delete", "pv", f"model-store-{namespace}", "--wait=false", check=False)


def _container(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    dep = json.loads(kube.kubectl("-n", namespace, "get", "deployment", name, "-o",
                                  "json").stdout)
    pod = dep["spec"]["template"]
    assert pod["metadata"]["labels"]["llm-d.ai/engine-type"] == "vllm"
    containers: list[dict[str, Any]] = pod["spec"]["containers"]
    return containers[0]


def test_an_8b_shaped_model_lands_on_the_gpus_the_sizing_says(kube: Kube, llm_ns: str) -> None:
    md = yaml.safe_load(EXAMPLE.read_text())
    count, products = sized_as_the_operator_would(kube, md)
    assert count == 1  # 15 GiB of weights + 4 GiB of KV cache: one GPU of any kind holds it
    kube.kubectl("-n", llm_ns, "apply", "-f", str(EXAMPLE))
    wait_phase(kube, llm_ns, "llama-8b", "Ready", timeout=60)

    c = _container(kube, llm_ns, "llama-8b")
    assert c["image"].startswith("vllm/vllm-openai:")
    assert c["command"] == ["vllm", "serve"]
    args = c["args"]
    assert args[0] == "/mnt/models/llama-3-8b-instruct"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags == {"--served-model-name": "llama-3-8b-instruct",
                     "--tensor-parallel-size": str(count), "--max-model-len": "8192",
                     "--max-num-seqs": "64", "--gpu-memory-utilization": "0.9",
                     "--dtype": "auto", "--port": "8080"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert (c[probe]["httpGet"]["path"], c[probe]["httpGet"]["port"]) == ("/health",
                                                                             "http"), probe
    # the startup budget covers loading 16 GB: more than the 10 minutes of a small model
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] > 600
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(count)

    placed = node_products(kube)
    nodes = pod_nodes(kube, llm_ns, "llama-8b")
    assert nodes and all(placed[n] in products for n in nodes), (nodes, products)
    row = rows(kube, llm_ns)["llama-8b"]
    assert row["READY"] == "True" and row["GPU"].startswith(f"{count}x"), row


def test_a_70b_shaped_model_gets_the_tensor_parallel_degree_the_sizing_picks(
        kube: Kube, llm_ns: str) -> None:
    md = llm("llama-70b", SHAPE_70B)
    count, products = sized_as_the_operator_would(kube, md)
    assert (count, products) == (4, ("NVIDIA-H100-80GB-HBM3",))
    kube.kubectl("-n", llm_ns, "apply", "-f", "-", input=yaml.safe_dump(md))
    wait_phase(kube, llm_ns, "llama-70b", "Ready", timeout=60)
    args = _container(kube, llm_ns, "llama-70b")["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    placed = node_products(kube)
    assert [placed[n] for n in pod_nodes(kube, llm_ns, "llama-70b")] == list(products)
    assert rows(kube, llm_ns)["llama-70b"]["GPU"] == "4xNVIDIA-H100-80GB-HBM3"


def test_a_405b_shaped_model_is_refused_at_once_with_numbers(kube: Kube, llm_ns: str) -> None:
    start = time.monotonic()
    kube.kubectl("-n", llm_ns, "apply", "-f", "-",
                 input=yaml.safe_dump(llm("llama-405b", SHAPE_405B)))
    row = row_where(kube, llm_ns, "llama-405b", "ModelTooLarge", timeout=5)
    print(f"ModelTooLarge in the Reason column {time.monotonic() - start:.1f} s after apply")
    assert row["REASON"] == ("ModelTooLarge: needs 771.7 GiB/replica; 16xA100-SXM4-80GB would "
                             "hold it, nodes have at most 8"), row
    assert row["PHASE"] == "Failed" and row["READY"] == "False"
    st = json.loads(kube.kubectl("-n", llm_ns, "get", "md", "llama-405b", "-o", "json").stdout)
    ready = next(c for c in st["status"]["conditions"] if c["type"] == "Ready")
    assert ready["message"].startswith("needs 771.7 GiB per replica (weights 756.0 GiB + KV "
                                       "cache 15.8 GiB for 4 x 8192 tokens"), ready
    assert "no node offers more than 8 GPUs" in ready["message"]
    # Its pod asks for what would hold it (16 GPUs): the scheduler finds no node, it never runs
    # on a GPU too small, and the model stays Failed.

    def unschedulable() -> dict[str, Any] | None:
        pods = json.loads(kube.kubectl("-n", llm_ns, "get", "pods", "-l",
                                       "app.kubernetes.io/instance=llama-405b", "-o",
                                       "json").stdout)["items"]
        for pod in pods:
            for cond in pod.get("status", {}).get("conditions") or []:
                if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                    return dict(pod)
        return None

    pod = wait_for(unschedulable, timeout=60, what="the 405B pod to be unschedulable")
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "16"
    assert not pod["spec"].get("nodeName")
    assert rows(kube, llm_ns)["llama-405b"]["PHASE"] == "Failed"


@pytest.mark.parametrize(("spec", "message"), [
    ({"model": {"uri": "pvc://s/m", "format": "hf"}, "runtime": {"engine": "vllm"}},
     "runtime.engine vllm needs whole GPUs"),
    ({"model": {"uri": "s3://b/m.onnx", "format": "onnx"},
      "runtime": {"engine": "vllm"}, "gpu": {"count": 1}}, "it needs model.format hf"),
    ({"model": {"uri": "s3://b/m.onnx", "format": "onnx"},
      "runtime": {"image": "img", "llm": {"maxModelLen": 128}}},
     "runtime.llm configures a language model"),
    ({"model": {"uri": "s3://b/m.onnx", "format": "onnx"}, "runtime": {"image": "img"},
      "gpu": {"count": "auto"}}, "gpu.count auto sizes a language model"),
    ({"model": {"uri": "pvc://s/m", "format": "hf"}, "runtime": {"image": "img"},
      "gpu": {"count": "many"}}, "gpu.count must be 1 to 16, or auto"),
    ({"model": {"uri": "pvc://s/m", "format": "hf"},
      "runtime": {"engine": "kubemaas", "image": "img"}, "gpu": {"count": 2}},
     "engine kubemaas serves a language model on one GPU"),
    ({"model": {"uri": "s3://b/m.onnx", "format": "onnx"}, "runtime": {}},
     "runtime.image is required for the kubemaas engine"),
    ({"model": {"uri": "s3://b/m.onnx", "format": "onnx", "shape": {"numLayers": 2}},
      "runtime": {"image": "img"}}, "model.shape describes a language model"),
    ({"model": {"uri": "pvc://s/m", "format": "hf", "shape": {"slidingWindow": 4096}},
      "runtime": {}, "gpu": {"count": 1}},
     "set slidingWindow and slidingWindowLayers together, or neither"),
    ({"model": {"uri": "pvc://s/m", "format": "hf", "shape": {
        "numLayers": 32, "slidingWindow": 4096, "slidingWindowLayers": 33}},
      "runtime": {}, "gpu": {"count": 1}}, "slidingWindowLayers must be at most numLayers"),
    ({"model": {"uri": "pvc://s/m", "format": "hf"}, "runtime": {},
      "gpu": {"count": 1}, "serving": {"auth": {"secretName": "k"}}},
     "serving.auth and serving.tls are served by the kubemaas runtime"),
])
def test_the_crd_refuses_what_no_engine_can_serve(kube: Kube, namespace: str,
                                                  spec: dict[str, Any], message: str) -> None:
    from tests.cluster.conftest import install

    install(kube)
    doc = {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "bad"}, "spec": spec}
    out = kube.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-",
                       input=yaml.safe_dump(doc), check=False)
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_the_crd_accepts_the_llm_examples(kube: Kube, namespace: str) -> None:
    from tests.cluster.conftest import install

    install(kube)
    for example in ("llm-8b-vllm", "llm-cpu-model"):
        out = kube.kubectl("-n", namespace, "apply", "--dry-run=server", "-f",
                           str(ROOT / "examples" / f"{example}.yaml"), check=False)
        assert out.returncode == 0, out.stderr
    # an hf model on whole GPUs needs no image (vLLM's is the operator's); count 1 to 16 too
    ok = llm("fine", SHAPE_70B, gpu={"count": 2}, runtime={})
    out = kube.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-",
                       input=yaml.safe_dump(ok), check=False)
    assert out.returncode == 0, out.stderr
