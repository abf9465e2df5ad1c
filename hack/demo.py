"""hack/demo's steps (see hack/demo). Each step prints what it runs; a failure says which."""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

from kubemaas_testbed import binaries  # noqa: E402
from kubemaas_testbed.cluster import Cluster  # noqa: E402
from kubemaas_testbed.kubeconfig import write_token  # noqa: E402
from kubemaas_testbed.processes import stop_child  # noqa: E402
from kubemaas_testbed.volumes import bound_host_volume  # noqa: E402

STATE = Path(os.environ.get("KUBEMAAS_DEMO_STATE", ROOT / ".state" / "demo"))
OPERATOR_NS = "kubemaas-system"
DEMO_NS = "demo"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
# Examples that can become Ready here (the H100 one needs its PersistentVolumeClaim: made below).
EXAMPLES = ["quickstart-model", "cpu-model", "h100-model", "mig-model", "multi-gpu-model",
            "autoscaling-model", "pinned-template-model", "llm-8b-vllm"]
LLM_NS = "demo-llm"  # the language model on the real node (not restricted: a hostPath, below)
MODEL_HOST = "https://raw.githubusercontent.com/kubemaas/kubemaas/main/"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(*args: str, input: str | None = None, quiet: bool = False) -> str:
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    if not quiet:
        print(f"$ {shown}", flush=True)
    result = subprocess.run(list(args), capture_output=True, text=True, input=input)
    if result.returncode != 0:
        raise SystemExit(f"hack/demo: `{shown}` failed ({result.returncode}):\n"
                         f"{result.stderr}{result.stdout}")
    if not quiet and result.stdout.strip():
        print(result.stdout.rstrip(), flush=True)
    return result.stdout


def wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"hack/demo: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, None
    except OSError:
        return 0, None


class Demo:
    def __init__(self) -> None:
        self.cluster = Cluster(STATE / "cluster")
        self.kubectl_bin = binaries.kubectl()
        helm = binaries.find("helm")
        if helm is None:
            raise SystemExit("hack/demo: helm is missing: run hack/build-testbed")
        self.helm_bin = str(helm)
        self.operator_pid = STATE / "operator.pid"

    def kubectl(self, *args: str, **kw: Any) -> str:
        return run(self.kubectl_bin, f"--kubeconfig={self.cluster.kubeconfig}", *args, **kw)

    def helm(self, *args: str) -> str:
        return run(self.helm_bin, f"--kubeconfig={self.cluster.kubeconfig}", *args)

    def namespace(self, name: str) -> None:
        self.kubectl("apply", "-f", "-", quiet=True, input=json.dumps(
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": name, "labels": RESTRICTED}}))
        print(f"namespace {name} (pod-security.kubernetes.io/enforce=restricted)")

    def up(self) -> None:
        say("1. the local control plane (etcd, kube-apiserver, controller-manager, scheduler; "
            "kwok simulates the nodes and their pods)")
        STATE.mkdir(parents=True, exist_ok=True)
        self.cluster.up(log=print)
        self.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product")

    def install(self) -> None:
        say("2. helm install the chart")
        self.namespace(OPERATOR_NS)
        self.helm("upgrade", "--install", "kubemaas", str(ROOT / "charts" / "kubemaas"),
                  "-n", OPERATOR_NS, "--wait", "--timeout", "120s")

    def start_operator(self) -> None:
        say("3. the operator, on this machine, under the chart's ServiceAccount token")
        self.stop_operator()
        token = self.kubectl("-n", OPERATOR_NS, "create", "token", "kubemaas-operator",
                             "--duration=24h", quiet=True).strip()
        config = write_token(STATE / "operator.kubeconfig", self.cluster.server,
                             self.cluster.pki / "ca.crt", token, "kubemaas-operator")
        port = free_port()
        log = STATE / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(config), "KUBEMAAS_OPERATOR_NAMESPACE": OPERATOR_NS,
               "KUBEMAAS_OPERATOR_HEALTH_PORT": str(port)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "kubemaas_operator"], stdout=out,
                                    stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                    start_new_session=True)
        self.operator_pid.write_text(str(proc.pid))
        wait(lambda: proc.poll() is None and fetch(f"http://127.0.0.1:{port}/healthz")[0] == 200,
             30, f"the operator's health endpoint (log {log})")
        print(f"python -m kubemaas_operator: pid {proc.pid}, log {log}")

    def stop_operator(self) -> None:
        if not self.operator_pid.exists():
            return
        pid = int(self.operator_pid.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.operator_pid.unlink(missing_ok=True)

    def deploy(self) -> None:
        say("4. kubectl apply -f examples/")
        self.namespace(DEMO_NS)
        self.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": bound_host_volume(
                "demo-model-store", "/models", DEMO_NS, "model-store")}))
        for example in EXAMPLES:
            self.kubectl("-n", DEMO_NS, "apply", "-f", str(ROOT / "examples" / f"{example}.yaml"))

        def all_ready() -> bool:
            items = json.loads(self.kubectl("-n", DEMO_NS, "get", "md", "-o", "json",
                                            quiet=True))["items"]
            return len(items) == len(EXAMPLES) and all(
                (m.get("status") or {}).get("phase") == "Ready" for m in items)
        wait(all_ready, 90, "every ModelDeployment to be Ready")
        say("5. kubectl get md")
        self.kubectl("-n", DEMO_NS, "get", "md")

    def infer(self) -> None:
        say("6. the runtime, started on 127.0.0.1 from the pod spec the operator wrote for "
            "plus-one")
        pod = json.loads(self.kubectl("-n", DEMO_NS, "get", "deployment", "plus-one", "-o",
                                      "json", quiet=True))["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        print("container:", json.dumps({k: container[k] for k in ("image", "command", "ports")}))
        print("env:", json.dumps(env))
        # The pod would fetch the model from GitHub; here the same bytes come from this
        # checkout on 127.0.0.1 (the runtime still checks the sha256), the port is a free one,
        # and emptyDir mounts are local directories.
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
            _Quiet, directory=str(ROOT)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = free_port()
        env["KUBEMAAS_MODEL_URI"] = env["KUBEMAAS_MODEL_URI"].replace(
            MODEL_HOST, f"http://127.0.0.1:{server.server_address[1]}/")
        env["KUBEMAAS_PORT"] = str(port)
        for mount in container["volumeMounts"]:
            local = STATE / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            env = {k: v.replace(mount["mountPath"], str(local)) for k, v in env.items()}
        command = [sys.executable, *container["command"][1:], *container.get("args", [])]
        log = STATE / "runtime.log"
        print(f"$ {' '.join(command)}   (log {log})")
        with log.open("wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                    env={"PATH": os.environ["PATH"], "HOME": str(STATE), **env})
        base = f"http://127.0.0.1:{port}"
        try:
            ready = container["readinessProbe"]["httpGet"]["path"]
            wait(lambda: proc.poll() is None and fetch(base + ready)[0] == 200, 60,
                 f"the runtime's readiness probe {ready} (log {log})")
            body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                "data": [1, 2, 3, 4]}]}
            print(f"POST {base}/v2/models/plus-one/infer {json.dumps(body)}")
            status, answer = fetch(f"{base}/v2/models/plus-one/infer", body)
            print(json.dumps(answer))
            if status != 200 or answer["outputs"][0]["data"] != [2.0, 3.0, 4.0, 5.0]:
                raise SystemExit(f"hack/demo: unexpected answer {status} {answer} (log {log})")
            print("plus-one answered x + 1: the operator/runtime contract holds end to end")
        finally:
            stop_child(proc)
            server.shutdown()

    def chat(self) -> None:
        """A language model served for real: a format hf ModelDeployment on the real node (a
        kubelet and containerd on this machine), a streamed chat completion from the openai
        client through `kubectl port-forward` on 127.0.0.1."""
        from kubemaas_operator.render import builtin_template
        from kubemaas_testbed import node as real
        from kubemaas_testbed import real_llm
        from kubemaas_testbed.llm_models import build_llm

        why = real_llm.unavailable()
        if why is not None:
            say(f"7. (no real node on this machine: {why}; the chat on a real node is skipped)")
            return
        say("7. a language model for real: the real node (kubelet + containerd here) serves a "
            "format hf ModelDeployment; the openai client streams a chat through "
            "kubectl port-forward")
        node = real.RealNode(self.cluster.state)
        manifest = node.up(self.cluster.server, log=print)
        try:
            store = STATE / "llm-store"
            if not (store / "tiny-llm" / "config.json").exists():
                build_llm(store / "tiny-llm")
            for path in [store, *store.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            self.kubectl("apply", "-f", "-", input=json.dumps(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LLM_NS}}))
            print("(the LLM packages — torch, transformers — come from this machine's "
                  "virtualenv through an administrator's template: see "
                  "hack/kubemaas_testbed/real_llm.py)")
            self.kubectl("-n", OPERATOR_NS, "patch", "configmap", real_llm.TEMPLATES_CONFIGMAP,
                         "--type=merge", "-p", real_llm.template_patch(
                             real_llm.host_packages_template(
                                 builtin_template("deployment.yaml.j2"))), quiet=True)
            self.kubectl("apply", "-f", "-", input=json.dumps(
                {"apiVersion": "v1", "kind": "List", "items": bound_host_volume(
                    "demo-llm-store", store, LLM_NS, "llm-store")}))
            md = real_llm.modeldeployment("tiny-llm", LLM_NS,
                                          manifest["images"]["runtime"]["ref"], "llm-store",
                                          "tiny-llm")
            self.kubectl("apply", "-f", "-", input=json.dumps(md))

            def ready() -> bool:
                status = json.loads(self.kubectl("-n", LLM_NS, "get", "md", "tiny-llm", "-o",
                                                 "json", quiet=True)).get("status") or {}
                return status.get("phase") == "Ready"
            wait(ready, 300, "the language model on the real node to be Ready")
            self.kubectl("-n", LLM_NS, "get", "md,pods", "-o", "wide")
            pod = json.loads(self.kubectl("-n", LLM_NS, "get", "pods", "-l",
                                          "app.kubernetes.io/instance=tiny-llm", "-o", "json",
                                          quiet=True))["items"][0]["metadata"]["name"]
            self._stream_chat(pod)
        finally:
            self.kubectl("delete", "namespace", LLM_NS, "--ignore-not-found", "--wait=true",
                         "--timeout=120s", quiet=True)
            self.kubectl("delete", "pv", "demo-llm-store", "--ignore-not-found", quiet=True)
            node.down(delete_node_object=True)

    def _stream_chat(self, pod: str) -> None:
        import openai

        port = free_port()
        print(f"$ kubectl -n {LLM_NS} port-forward pod/{pod} {port}:8080 --address=127.0.0.1")
        proc = subprocess.Popen([self.kubectl_bin, f"--kubeconfig={self.cluster.kubeconfig}",
                                 "-n", LLM_NS, "port-forward", f"pod/{pod}", f"{port}:8080",
                                 "--address=127.0.0.1"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if "Forwarding from" not in line:
                raise SystemExit(f"hack/demo: kubectl port-forward: {line}")
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                                   max_retries=0, timeout=60)
            question = "Tell me about the cluster"
            print(f"openai client: chat.completions.create(model='tiny', stream=True, "
                  f"messages=[user: {question!r}])")
            print("assistant (random weights, so the words are noise): ", end="", flush=True)
            for chunk in client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": question}],
                    max_tokens=24, temperature=0, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    print(chunk.choices[0].delta.content, end="", flush=True)
                if chunk.choices and chunk.choices[0].finish_reason:
                    print(f"\n[finish_reason: {chunk.choices[0].finish_reason}]")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()

    def down(self) -> None:
        self.stop_operator()
        self.cluster.down()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: list[str]) -> int:
    demo = Demo()
    if argv[:1] == ["down"]:
        demo.down()
        print("hack/demo: stopped")
        return 0
    keep = "--keep" in argv
    started = time.monotonic()
    try:
        demo.up()
        demo.install()
        demo.start_operator()
        demo.deploy()
        demo.infer()
        demo.chat()
    except BaseException:
        if not keep:
            demo.down()
        raise
    print(f"\nhack/demo: done in {time.monotonic() - started:.0f} s")
    if keep:
        print(f"left running: export KUBECONFIG={demo.cluster.kubeconfig}; "
              f"stop with: hack/demo down")
    else:
        demo.down()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
