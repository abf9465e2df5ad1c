"""A real node beside kwok's simulated ones: containerd, a CNI bridge and a kubelet.

kwok's nodes only pretend to run pods. This node runs them: a kubelet v1.36.3 (built
like the control plane by `hack/build-testbed --with-kubelet`) registers as a CPU node,
talks CRI to a containerd started as a plain process, and gives pods addresses on a
bridge of ours (10.250.0.0/24), reachable from this machine. docs/real-node.md explains
every setting.

Layout under <cluster state>/node/:
    containerd/      config.toml, root/, state/, containerd.sock
    cni/             net.d/ (the bridge network), ipam/ (host-local's leases)
    kubelet/         config.yaml, kubeconfig, root/ (the kubelet's --root-dir),
                     volume-plugins/
    pod-logs/        containers' logs (`kubectl logs` reads them through the kubelet)
    created.json     what `up` changed on the host, so that `down` undoes exactly that
Processes (pid files and logs) sit with the control plane's: pids/, logs/.

Network safety: the only addresses involved are 127.0.0.1 and our bridge's subnet. The
bridge's own address is the node's InternalIP (the kubelet refuses a loopback node IP),
and pods get no default route, so nothing they send leaves the bridge.

Beside this module: node_slots.py (the bridge, subnet and cgroup root each real node on the
machine owns), node_config.py (the CNI network, containerd's and the kubelet's configuration),
node_host.py (the host operations: links, mounts, iptables chains, cgroups, sysctls) and
node_status.py (when the control plane sees the node Ready and untainted).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import binaries, kubeconfig, node_slots, node_status, pki
from .node_config import LABEL as LABEL
from .node_config import NETWORK_NAME as NETWORK_NAME
from .node_config import TAINT as TAINT
from .node_config import TOLERATION as TOLERATION
from .node_config import cni_conflist, containerd_config, kubelet_config
from .node_host import (
    CNI_BIN,
    cni_chains,
    free_port,
    link_exists,
    make_cgroup_root,
    mounts_under,
    netns_of_sandboxes,
    read_sysctls,
    remove_cgroup_tree,
    remove_cni_chains,
    run,
    unmount,
    unmount_under,
    write_sysctls,
)
from .node_host import NodeError as NodeError
from .node_slots import SLOTS_DIR
from .node_slots import Slot as Slot
from .processes import ProcessTable, log_tail

NODE_NAME = "real-0"
# Where containerd's registry traffic goes: a closed port on loopback. No registry is
# reachable from these machines, and none may be tried (images come from archives).
NO_REGISTRY_PROXY = "http://127.0.0.1:9"
STOP_ORDER = ["kubelet", "containerd"]
_RUNC = shutil.which("runc") or "/usr/sbin/runc"
NODE_CACHE = Path(os.environ.get("KUBEMAAS_NODE_CACHE",
                                 Path.home() / ".cache" / "kubemaas" / "node"))
BUILD_IMAGES = binaries.REPO_ROOT / "hack" / "node" / "build-images"
# The apiserver's identity towards kubelets (for logs, exec, port-forward): the
# kubelet authenticates it by this certificate and authorises it by a webhook.
APISERVER_KUBELET_CLIENT = pki.Identity(
    "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")


# ---- hooks for the control plane (cluster.py) ----------------------------------------

def make_apiserver_client_cert(pki_dir: Path) -> None:
    pki.make_client(pki_dir, APISERVER_KUBELET_CLIENT)


def apiserver_flags(pki_dir: Path) -> list[str]:
    """What the apiserver needs to reach a real kubelet (harmless without one)."""
    stem = APISERVER_KUBELET_CLIENT.file_stem
    return [
        f"--kubelet-client-certificate={pki_dir / f'{stem}.crt'}",
        f"--kubelet-client-key={pki_dir / f'{stem}.key'}",
        # A kubelet reports a Hostname address (its node name, which resolves
        # nowhere) and an InternalIP (our bridge's address): use the IP. kwok's
        # nodes report only an InternalIP, so nothing changes for them.
        "--kubelet-preferred-address-types=InternalIP,Hostname,InternalDNS,ExternalDNS,"
        "ExternalIP",
    ]


# ---- images ------------------------------------------------------------------------

def images_manifest(build: bool = True) -> dict[str, Any]:
    """images.json from hack/node/build-images (which builds what is missing)."""
    if build:
        result = subprocess.run([str(BUILD_IMAGES)], capture_output=True, text=True)
        if result.returncode != 0:
            raise NodeError(f"hack/node/build-images failed:\n{result.stderr[-3000:]}")
    path = NODE_CACHE / "images" / "images.json"
    if not path.exists():
        raise NodeError(f"{path} is missing: run hack/node/build-images")
    return dict(json.loads(path.read_text()))


# ---- the node ----------------------------------------------------------------------

@dataclass
class RealNode:
    """The real node of the testbed whose state directory is `cluster_state`."""

    cluster_state: Path
    name: str = NODE_NAME

    @property
    def dir(self) -> Path:
        return self.cluster_state / "node"

    @property
    def processes(self) -> ProcessTable:
        return ProcessTable(self.cluster_state)

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    @property
    def crictl_config(self) -> Path:
        """`crictl --config THIS ps` talks to this node's containerd."""
        path = self.dir / "crictl.yaml"
        if not path.exists() and self.dir.exists():
            endpoint = f"unix://{self.containerd_socket}"
            path.write_text(yaml.safe_dump({"runtime-endpoint": endpoint,
                                            "image-endpoint": endpoint, "timeout": 30}))
        return path

    @property
    def kubeconfig(self) -> Path:
        return self.cluster_state / "kubeconfig"

    def is_up(self) -> bool:
        names = {p.name for p in self.processes.running()}
        return set(STOP_ORDER) <= names

    def processes_alive(self) -> bool:
        names = {p.name for p in self.processes.running()}
        return bool(set(STOP_ORDER) & names)

    @property
    def slot(self) -> Slot:
        index = self._read_created().get("slot")
        if index is None:
            raise NodeError(f"no real node in {self.cluster_state}")
        return Slot(int(index))

    # ---- up ------------------------------------------------------------------------

    def up(self, server: str, timeout: float = 120.0,
           log: Callable[[str], None] = print) -> dict[str, Any]:
        """Start containerd and the kubelet; return images.json's content."""
        if self.is_up():
            log(f"real node {self.name} already up")
            return images_manifest(build=False)
        _preflight()
        started = time.monotonic()
        manifest = images_manifest()
        kubelet = _kubelet()  # built here on first use, before anything is started
        log(f"images ready in {time.monotonic() - started:.1f} s")
        if self.dir.exists():
            self.down()
        for sub in ("containerd", "cni/net.d", "cni/ipam", "kubelet/root",
                    "kubelet/volume-plugins", "pod-logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        slot, alone = node_slots.claim(
            self.cluster_state, log, alive=lambda owner: RealNode(owner).processes_alive(),
            tear_down=lambda owner: RealNode(owner).down(release_slot=False))
        host_sysctls = SLOTS_DIR / "sysctls.json"
        if alone and not host_sysctls.exists():
            # The first real node on the machine keeps the host's values (a file left
            # by a node that died holds them already: the kubelet has changed them since).
            host_sysctls.write_text(json.dumps(read_sysctls()))
        created: dict[str, Any] = {"slot": slot.index, "bridge": False,
                                   "iptables_chains": cni_chains()}
        self._write_created(created)
        try:
            self._make_bridge(slot)
            created["bridge"] = True
            self._write_created(created)
            make_cgroup_root(slot.cgroup_root)
            self._write_cni_config(slot)
            self._start_containerd(manifest)
            self._wait(self._cri_ready, 30, "containerd's CRI", "containerd")
            for key in ("pause", "runtime"):
                self.import_image(Path(manifest["images"][key]["archive"]))
            self._write_certs(slot)
            self._start_kubelet(kubelet, server, slot)
            self._wait(self._node_ready, timeout, f"node {self.name} Ready", "kubelet")
            settled = node_status.Settling()
            self._wait(lambda: settled(self._node_object()), node_status.SETTLE_S * 5,
                       f"node {self.name} Ready without the control plane's not-ready "
                       "taints", "kubelet")
        except BaseException:
            log(f"real node failed to start; logs: {self.cluster_state / 'logs'}"
                "/{containerd,kubelet}.log (kept); undoing what was started")
            self.down()
            raise
        log(f"real node {self.name} up in {time.monotonic() - started:.1f} s: "
            f"bridge {slot.bridge}, pods on {slot.subnet}")
        return manifest

    def _write_created(self, created: dict[str, Any]) -> None:
        (self.dir / "created.json").write_text(json.dumps(created, indent=2))

    def _make_bridge(self, slot: Slot) -> None:
        # Made here rather than by the CNI bridge plugin on the first pod: the
        # kubelet needs the node's address (the bridge's) before any pod exists.
        run("ip", "link", "add", slot.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{slot.gateway}/{slot.subnet.prefixlen}", "dev", slot.bridge)
        run("ip", "link", "set", slot.bridge, "up")

    def _write_cni_config(self, slot: Slot) -> None:
        (self.dir / "cni" / "net.d" / "10-kubemaas.conflist").write_text(
            json.dumps(cni_conflist(self, slot), indent=2))

    def _start_containerd(self, manifest: dict[str, Any]) -> None:
        config = self.dir / "containerd" / "config.toml"
        config.write_text(containerd_config(self, manifest["images"]["pause"]["ref"]))
        self.processes.start("containerd", [
            shutil.which("containerd") or "/usr/bin/containerd",
            f"--config={config}",
            "--log-level=info",
        ], env={
            # An image missing from the node fails its pull at once, on loopback,
            # instead of resolving and dialling a registry: containerd's HTTP client
            # honours these, and nothing here is excluded from them.
            "HTTPS_PROXY": NO_REGISTRY_PROXY, "HTTP_PROXY": NO_REGISTRY_PROXY,
            "https_proxy": NO_REGISTRY_PROXY, "http_proxy": NO_REGISTRY_PROXY,
            "NO_PROXY": "", "no_proxy": "",
        })

    def crictl(self, *args: str, check: bool = True,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        crictl = NODE_CACHE / "bin" / "crictl"
        result = subprocess.run(
            [str(crictl), f"--config={self.crictl_config}", *args],
            capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise NodeError(f"crictl {' '.join(args)}: {result.stderr.strip()}")
        return result

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ctr", f"--address={self.containerd_socket}", "--namespace=k8s.io", *args],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)}: {result.stderr.strip()}")
        return result

    def import_image(self, archive: Path) -> None:
        """Put an OCI archive (podman save --format oci-archive) into containerd, then drop
        the compressed layers it has unpacked: containers need only the unpacked ones, and
        the language-model image's are 2.9 GB of a disk other work shares."""
        # --all-platforms: nothing to select, and it skips a platform match that
        # podman's archives (which carry no platform in their index) can fail.
        try:
            self.ctr("images", "import", "--all-platforms", str(archive))
        except NodeError as err:
            free = shutil.disk_usage(self.dir).free / 1e9
            raise NodeError(f"{err} (free disk now {free:.1f} GB; an import needs room for "
                            f"the archive's layers and their unpacked copy)") from err
        self.discard_unpacked_layers()

    def discard_unpacked_layers(self) -> None:
        """Delete every layer blob containerd has unpacked (the ones it labelled with their
        uncompressed digest), as its CRI does for pulled images with discard_unpacked_layers.
        The image stays listed and startable: its config and manifest stay, and creating a
        container needs only the snapshots."""
        unpacked = self.unpacked_layer_blobs()
        if unpacked:
            self.ctr("content", "rm", *unpacked)

    def unpacked_layer_blobs(self) -> list[str]:
        """The digests of the content blobs containerd holds unpacked."""
        listing = self.ctr("content", "ls").stdout.splitlines()[1:]  # DIGEST SIZE AGE LABELS
        return [line.split()[0] for line in listing
                if "containerd.io/uncompressed=" in line]

    def _cri_ready(self) -> bool:
        if not self.containerd_socket.exists():
            return False
        try:
            info = json.loads(self.crictl("info", check=True, timeout=10).stdout)
        except (NodeError, subprocess.TimeoutExpired, json.JSONDecodeError):
            return False
        conditions = {c["type"]: c["status"] for c in info["status"]["conditions"]}
        return bool(conditions.get("RuntimeReady"))

    def _write_certs(self, slot: Slot) -> None:
        p = self.cluster_state / "pki"
        pki.sign(p, f"node-{self.name}", f"/CN=system:node:{self.name}/O=system:nodes",
                 "keyUsage=critical,digitalSignature,keyEncipherment\n"
                 "extendedKeyUsage=clientAuth\n")
        pki.make_serving(p, f"kubelet-{self.name}", f"system:node:{self.name}",
                         [f"IP:{slot.gateway}", f"DNS:{self.name}"])

    def _start_kubelet(self, kubelet: Path, server: str, slot: Slot) -> None:
        p = self.cluster_state / "pki"
        k = self.dir / "kubelet"
        kubeconfig.write(k / "kubeconfig", server, p / "ca.crt", p / f"node-{self.name}.crt",
                         p / f"node-{self.name}.key", f"system:node:{self.name}")
        config = k / "config.yaml"
        config.write_text(yaml.safe_dump(kubelet_config(self, slot, free_port(), free_port()),
                                         sort_keys=False))
        self.processes.start("kubelet", [
            str(kubelet),
            f"--config={config}",
            f"--kubeconfig={k / 'kubeconfig'}",
            f"--root-dir={k / 'root'}",
            f"--hostname-override={self.name}",
            f"--node-ip={slot.gateway}",
            f"--node-labels={LABEL}=true,kubemaas.io/accelerator=none",
            "--v=2",
        ])

    def _node_object(self) -> dict[str, Any] | None:
        result = subprocess.run(
            [binaries.kubectl(), f"--kubeconfig={self.kubeconfig}", "get", "node", self.name,
             "-o", "json"], capture_output=True, text=True)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def _node_ready(self) -> bool:
        node = self._node_object()
        return node is not None and node_status.is_ready(node)

    def _wait(self, check: Callable[[], bool], timeout: float, what: str,
              component: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = {p.name for p in self.processes.running()}
            dead = [n for n in STOP_ORDER if (self.cluster_state / "pids" / f"{n}.pid").exists()
                    and n not in running]
            if dead:
                raise NodeError(f"{dead[0]} exited; the end of its log:\n"
                                + log_tail(self.cluster_state / "logs" / f"{dead[0]}.log"))
            if check():
                return
            time.sleep(0.5)
        raise NodeError(f"timed out after {timeout:.0f} s waiting for {what}; the end of "
                        f"{component}.log:\n"
                        + log_tail(self.cluster_state / "logs" / f"{component}.log"))

    # ---- down ----------------------------------------------------------------------

    def down(self, delete_node_object: bool = False, release_slot: bool = True) -> None:
        """Undo `up` completely: pods, containers, netns, mounts, bridge, processes.

        Order: stop the kubelet (so it restarts nothing); have containerd stop and
        remove every pod sandbox (the CNI plugins then remove the veths, addresses
        and netns); stop containerd and any shim it left; unmount what is still
        mounted under our directory; remove the bridge, the CNI iptables chains that
        were not there before, the kubelet's cgroups; put the sysctls back.
        """
        if not self.dir.exists():
            return
        created = self._read_created()
        self.processes.stop("kubelet", timeout=20)
        if "containerd" in {p.name for p in self.processes.running()}:
            self._remove_all_pods()
        self.processes.stop("containerd", timeout=20)
        self._kill_shims()
        self._delete_runc_containers()
        netns = self._our_netns()
        unmount_under(self.dir)
        for path in netns:
            unmount(path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        slot = Slot(int(created["slot"])) if "slot" in created else None
        if slot is not None:
            if created.get("bridge") and link_exists(slot.bridge):
                run("ip", "link", "del", slot.bridge)
            remove_cgroup_tree(slot.cgroup_root)
        remove_cni_chains(keep=set(created.get("iptables_chains", [])))
        if slot is not None and release_slot and node_slots.release(slot):
            # The last real node on the machine puts the host's sysctls back.
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                write_sysctls(json.loads((SLOTS_DIR / "sysctls.json").read_text()))
                (SLOTS_DIR / "sysctls.json").unlink()
        if delete_node_object and self.kubeconfig.exists():
            subprocess.run([binaries.kubectl(), f"--kubeconfig={self.kubeconfig}", "delete",
                            "node", self.name, "--ignore-not-found", "--wait=false"],
                           capture_output=True, text=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            raise NodeError(f"could not remove {self.dir}: something is still mounted "
                            f"under it:\n{mounts_under(self.dir)}")

    def _read_created(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.dir / "created.json").read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _remove_all_pods(self) -> None:
        try:
            pods = self.crictl("pods", "-q", timeout=40).stdout.split()
            for pod in pods:
                self.crictl("stopp", pod, check=False, timeout=60)
                self.crictl("rmp", "--force", pod, check=False, timeout=60)
        except (NodeError, subprocess.TimeoutExpired):
            pass  # what is left is removed below, by pid and by path

    def _our_netns(self) -> list[Path]:
        """Network namespaces containerd made for our pods (recorded in its state)."""
        found: list[Path] = []
        with contextlib.suppress(FileNotFoundError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                mount_point = line.split()[4]
                if mount_point.startswith(("/var/run/netns/cni-", "/run/netns/cni-")):
                    found.append(Path(mount_point))
        ours = netns_of_sandboxes(self.dir / "containerd")
        return [p for p in found if p.name in ours]

    def _delete_runc_containers(self) -> None:
        """Containers runc still knows (when containerd died before it could stop them,
        its shims' children live on): kill and delete each, which removes its cgroups."""
        root = self.dir / "containerd" / "runc" / "k8s.io"
        if not root.is_dir():
            return
        listed = subprocess.run([_RUNC, f"--root={root}", "list", "-q"],
                                capture_output=True, text=True)
        for container in listed.stdout.split():
            subprocess.run([_RUNC, f"--root={root}", "delete", "--force", container],
                           capture_output=True)

    def _kill_shims(self) -> None:
        """containerd-shim processes started for our containerd (they outlive it)."""
        needle = str(self.containerd_socket).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and needle in argv:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), 9)


# ---- host helpers --------------------------------------------------------------------

def _preflight() -> None:
    if os.geteuid() != 0:
        raise NodeError("the real node needs root (containerd, runc, bridges, mounts)")
    missing = [tool for tool in ("containerd", "runc", "ctr", "ip", "iptables", "podman")
               if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    missing += [str(CNI_BIN / p) for p in ("bridge", "host-local", "loopback", "portmap")
                if not (CNI_BIN / p).exists()]
    if missing:
        raise NodeError(f"missing: {', '.join(missing)}; run hack/install-node-deps")


def _kubelet() -> Path:
    """The kubelet from the testbed's directories, built on first use."""
    found = binaries.find("kubelet")
    if found is None:
        subprocess.run([str(binaries.BUILD_SCRIPT), "--with-kubelet"], check=True)
        found = binaries.find("kubelet")
    if found is None:
        raise NodeError(f"no kubelet: run {binaries.BUILD_SCRIPT} --with-kubelet")
    return found
