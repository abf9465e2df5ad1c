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
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import binaries, kubeconfig, pki
from .processes import ProcessTable, log_tail

NODE_NAME = "real-0"
# Several testbeds on one machine may each have a real node (engineers' test sessions
# run side by side): each takes a slot N, which gives it the bridge kubemaasN, the
# subnet 10.250.N.0/24 and the cgroup root /kubemaas-nodeN. Slots are claimed under a
# lock in SLOTS_DIR (on /run: a reboot, which removes bridges too, forgets them).
SUBNETS = ipaddress.ip_network("10.250.0.0/16")  # every real node's pods, never kwok's
MAX_SLOTS = 32
SLOTS_DIR = Path(os.environ.get("KUBEMAAS_NODE_SLOTS", "/run/kubemaas/real-nodes"))
NETWORK_NAME = "kubemaas-real-node"
LABEL = "kubemaas.io/real-node"
# Pods land here only when they ask to (nodeSelector LABEL=true and this toleration):
# a stray pod with a registry image would otherwise make the node try to pull it.
TAINT = {"key": LABEL, "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
# Where containerd's registry traffic goes: a closed port on loopback. No registry is
# reachable from these machines, and none may be tried (images come from archives).
NO_REGISTRY_PROXY = "http://127.0.0.1:9"
STOP_ORDER = ["kubelet", "containerd"]
CNI_BIN = Path("/usr/lib/cni")
_RUNC = shutil.which("runc") or "/usr/sbin/runc"
NODE_CACHE = Path(os.environ.get("KUBEMAAS_NODE_CACHE",
                                 Path.home() / ".cache" / "kubemaas" / "node"))
BUILD_IMAGES = binaries.REPO_ROOT / "hack" / "node" / "build-images"
# The apiserver's identity towards kubelets (for logs, exec, port-forward): the
# kubelet authenticates it by this certificate and authorises it by a webhook.
APISERVER_KUBELET_CLIENT = pki.Identity(
    "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
# Sysctls the kubelet sets on start when protectKernelDefaults is false (and refuses
# to start over, when it is true): recorded by `up`, put back by `down`.
KUBELET_SYSCTLS = ["vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                   "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
                   "kernel/keys/root_maxbytes"]


class NodeError(RuntimeError):
    """The real node could not be brought up (or down); the message says why."""


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


# ---- slots ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    """What one real node owns on this machine."""

    index: int

    @property
    def bridge(self) -> str:
        return f"kubemaas{self.index}"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.250.{self.index}.0/24")

    @property
    def gateway(self) -> str:
        """The bridge's address on the host, and the node's InternalIP."""
        return str(self.subnet.network_address + 1)

    @property
    def cgroup_root(self) -> str:
        """The kubelet's cgroup root: two kubelets under one /kubepods would each
        remove the other's pods' cgroups as orphans."""
        return f"/kubemaas-node{self.index}"


@contextlib.contextmanager
def _slots_locked() -> Iterator[None]:
    SLOTS_DIR.mkdir(parents=True, exist_ok=True)
    with (SLOTS_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _slot_owners() -> dict[int, Path]:
    owners = {}
    for entry in SLOTS_DIR.glob("*.json") if SLOTS_DIR.exists() else []:
        with contextlib.suppress(ValueError, OSError, KeyError):
            owners[int(entry.stem)] = Path(json.loads(entry.read_text())["state"])
    return owners


def _claim_slot(state: Path, log: Callable[[str], None]) -> tuple[Slot, bool]:
    """A free slot for the testbed at `state` (reclaiming those of dead nodes), and
    whether no other real node is up on this machine."""
    with _slots_locked():
        owners = _slot_owners()
        for index, owner in sorted(owners.items()):
            if owner != state and RealNode(owner).processes_alive():
                continue
            log(f"reclaiming slot {index} from a real node that is gone ({owner})")
            RealNode(owner).down(release_slot=False)
            bridge = Slot(index).bridge
            if _link_exists(bridge):
                _run("ip", "link", "del", bridge)
            _remove_cgroup_tree(Slot(index).cgroup_root)
            (SLOTS_DIR / f"{index}.json").unlink()
            del owners[index]
        alone = not owners
        for index in range(MAX_SLOTS):
            slot = Slot(index)
            if index in owners or _link_exists(slot.bridge) or _address_in_use(slot.subnet):
                continue
            (SLOTS_DIR / f"{index}.json").write_text(json.dumps({"state": str(state)}))
            return slot, alone
    raise NodeError(f"no free slot for a real node: {len(owners)} are up on this machine")


def _release_slot(slot: Slot) -> bool:
    """Give the slot back; True if it was the last one in use on this machine."""
    with _slots_locked():
        with contextlib.suppress(FileNotFoundError):
            (SLOTS_DIR / f"{slot.index}.json").unlink()
        return not _slot_owners()


def _address_in_use(subnet: ipaddress.IPv4Network) -> bool:
    """Whether any interface of this machine has an address in `subnet`."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            address = ipaddress.IPv4Interface(parts[parts.index("inet") + 1])
            if address.network.overlaps(subnet):
                return True
    return False


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
        slot, alone = _claim_slot(self.cluster_state, log)
        host_sysctls = SLOTS_DIR / "sysctls.json"
        if alone and not host_sysctls.exists():
            # The first real node on the machine keeps the host's values (a file left
            # by a node that died holds them already: the kubelet has changed them since).
            host_sysctls.write_text(json.dumps(_read_sysctls()))
        created: dict[str, Any] = {"slot": slot.index, "bridge": False,
                                   "iptables_chains": _cni_chains()}
        self._write_created(created)
        try:
            self._make_bridge(slot)
            created["bridge"] = True
            self._write_created(created)
            _make_cgroup_root(slot.cgroup_root)
            self._write_cni_config(slot)
            self._start_containerd(manifest)
            self._wait(self._cri_ready, 30, "containerd's CRI", "containerd")
            for key in ("pause", "runtime"):
                self.import_image(Path(manifest["images"][key]["archive"]))
            self._write_certs(slot)
            self._start_kubelet(kubelet, server, slot)
            self._wait(self._node_ready, timeout, f"node {self.name} Ready", "kubelet")
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
        _run("ip", "link", "add", slot.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{slot.gateway}/{slot.subnet.prefixlen}", "dev", slot.bridge)
        _run("ip", "link", "set", slot.bridge, "up")

    def _write_cni_config(self, slot: Slot) -> None:
        conflist = {
            "cniVersion": "1.0.0",
            "name": NETWORK_NAME,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": slot.bridge,
                    # The bridge keeps GATEWAY, so this host reaches pod IPs
                    # directly over the bridge ...
                    "isGateway": True,
                    # ... but pods get no default route and no masquerading:
                    # nothing they send can leave the bridge.
                    "isDefaultGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(slot.subnet), "gateway": slot.gateway}]],
                        "routes": [{"dst": str(slot.subnet)}],
                        "dataDir": str(self.dir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "loopback"},
            ],
        }
        (self.dir / "cni" / "net.d" / "10-kubemaas.conflist").write_text(
            json.dumps(conflist, indent=2))

    def _containerd_config(self, sandbox_image: str) -> str:
        d = self.dir / "containerd"
        return f'''# containerd for the kubemaas real node (hack/kubemaas_testbed/node.py):
# everything it keeps lives under {d}; it never touches a system containerd.
version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
# Plugins that need host setup we do not have (or want).
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.containerd_socket}.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"

[plugins."io.containerd.grpc.v1.cri"]
  # No registry can be reached: the sandbox image is ours, imported from an archive.
  sandbox_image = "{sandbox_image}"
  # The streaming server (exec, attach, port-forward) answers the kubelet only.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # root here lacks CAP_SYS_RESOURCE, so no process may lower its oom_score_adj;
  # the kubelet asks -998 for every sandbox and -997 for Guaranteed containers, and
  # runc fails with "nsexec: failed to update /proc/self/oom_score_adj: Permission
  # denied". This clamps every request to containerd's own score instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        # runc's state (one directory per container) under ours, not /run/containerd.
        Root = "{d / 'runc'}"
        # cgroupfs, as the kubelet's cgroupDriver: there is no systemd here.
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.dir / 'cni' / 'net.d'}"
    max_conf_num = 1
'''

    def _start_containerd(self, manifest: dict[str, Any]) -> None:
        config = self.dir / "containerd" / "config.toml"
        config.write_text(self._containerd_config(manifest["images"]["pause"]["ref"]))
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
        """Put an OCI archive (podman save --format oci-archive) into containerd."""
        # --all-platforms: nothing to select, and it skips a platform match that
        # podman's archives (which carry no platform in their index) can fail.
        self.ctr("images", "import", "--all-platforms", str(archive))

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

    def _kubelet_config(self, slot: Slot, port: int, healthz_port: int) -> dict[str, Any]:
        p = self.cluster_state / "pki"
        k = self.dir / "kubelet"
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # docs/real-node.md explains each setting at more length.
            # This machine has cgroup v1 (hybrid). By default kubelet v1.36 refuses
            # it: "kubelet is configured to not run on a host using cgroup v1".
            "failCgroupV1": False,
            # No systemd (PID 1 is not systemd): cgroups are written directly, as
            # containerd's runc does (SystemdCgroup = false).
            "cgroupDriver": "cgroupfs",
            # Our own cgroup tree per node (see Slot.cgroup_root), not /kubepods.
            "cgroupRoot": slot.cgroup_root,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "imageServiceEndpoint": f"unix://{self.containerd_socket}",
            # The kubelet's API (logs, exec, port-forward) listens on our bridge's
            # address only: the node's InternalIP, which the apiserver dials.
            "address": slot.gateway,
            "port": port,  # a free port: several nodes may share the machine
            "readOnlyPort": 0,  # no unauthenticated port
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            # A serving certificate from the testbed's CA (no CSR approval loop).
            "tlsCertFile": str(p / f"kubelet-{self.name}.crt"),
            "tlsPrivateKeyFile": str(p / f"kubelet-{self.name}.key"),
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            # Callers must present a certificate from the testbed's CA (the apiserver
            # does: apiserver_flags) and are authorised by the apiserver (SubjectAccessReview).
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(p / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            # Under our directory instead of /var/log/pods and /usr/libexec/kubernetes.
            "podLogsDir": str(self.dir / "pod-logs"),
            "volumePluginDir": str(k / "volume-plugins"),
            # No kube-proxy here, so nothing needs the kubelet's iptables chains;
            # the host's iptables stay as they were.
            "makeIPTablesUtilChains": False,
            # Machines with swap must still run the node (pods get no swap: the
            # default swapBehavior is NoSwap).
            "failSwapOn": False,
            # The disk is shared with other work: its usage says nothing about this
            # node, and image GC would delete the images we imported (they cannot be
            # pulled again). Eviction only when the disk or memory is really full.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
            # No cluster DNS and nowhere to resolve to: pods get no host resolver.
            "resolvConf": "",
            "clusterDomain": "cluster.local",
            "maxPods": 16,  # the pod subnet is a /24; the machine has 2 cores
            "registerNode": True,
            # Pods opt in (nodeSelector + toleration): see TAINT.
            "registerWithTaints": [TAINT],
        }

    def _start_kubelet(self, kubelet: Path, server: str, slot: Slot) -> None:
        p = self.cluster_state / "pki"
        k = self.dir / "kubelet"
        kubeconfig.write(k / "kubeconfig", server, p / "ca.crt", p / f"node-{self.name}.crt",
                         p / f"node-{self.name}.key", f"system:node:{self.name}")
        config = k / "config.yaml"
        config.write_text(yaml.safe_dump(self._kubelet_config(slot, _free_port(), _free_port()),
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

    def _node_ready(self) -> bool:
        result = subprocess.run(
            [binaries.kubectl(), f"--kubeconfig={self.kubeconfig}", "get", "node", self.name,
             "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"],
            capture_output=True, text=True)
        return result.returncode == 0 and result.stdout.strip() == "True"

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
        _unmount_under(self.dir)
        for path in netns:
            _unmount(path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        slot = Slot(int(created["slot"])) if "slot" in created else None
        if slot is not None:
            if created.get("bridge") and _link_exists(slot.bridge):
                _run("ip", "link", "del", slot.bridge)
            _remove_cgroup_tree(slot.cgroup_root)
        _remove_cni_chains(keep=set(created.get("iptables_chains", [])))
        if slot is not None and release_slot and _release_slot(slot):
            # The last real node on the machine puts the host's sysctls back.
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                _write_sysctls(json.loads((SLOTS_DIR / "sysctls.json").read_text()))
                (SLOTS_DIR / "sysctls.json").unlink()
        if delete_node_object and self.kubeconfig.exists():
            subprocess.run([binaries.kubectl(), f"--kubeconfig={self.kubeconfig}", "delete",
                            "node", self.name, "--ignore-not-found", "--wait=false"],
                           capture_output=True, text=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            raise NodeError(f"could not remove {self.dir}: something is still mounted "
                            f"under it:\n{_mounts_under(self.dir)}")

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
        ours = _netns_of_sandboxes(self.dir / "containerd")
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


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise NodeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])



def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Mount points escape spaces as \040; ours have none.
        point = line.split()[4]
        if point.startswith(prefix):
            points.append(point)
    return points


def _unmount(path: Path | str) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _unmount_under(directory: Path) -> None:
    """Unmount everything under directory, deepest first (repeat: mounts stack)."""
    for _ in range(5):
        points = _mounts_under(directory)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            _unmount(point)


def _netns_of_sandboxes(containerd_dir: Path) -> set[str]:
    """Names of netns files referenced in our containerd's sandbox state."""
    names: set[str] = set()
    root = containerd_dir / "root"
    if not root.exists():
        return names
    # containerd records each sandbox's netns path in its metadata (bolt db): scan
    # the db's bytes for "/run/netns/cni-<uuid>" rather than parse bolt.
    db = root / "io.containerd.metadata.v1.bolt" / "meta.db"
    with contextlib.suppress(FileNotFoundError):
        data = db.read_bytes()
        start = 0
        while True:
            i = data.find(b"/netns/cni-", start)
            if i < 0:
                break
            name = data[i + len(b"/netns/"):i + len(b"/netns/") + 40].decode(errors="ignore")
            names.add(name[:40])
            start = i + 1
    return names


def _cni_chains() -> list[str]:
    """iptables chains of the CNI plugins (CNI-*) in the nat table, as they are now."""
    result = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True)
    return sorted(line.split()[1] for line in result.stdout.splitlines()
                  if line.startswith("-N CNI-"))


def _remove_cni_chains(keep: set[str]) -> None:
    """Remove the CNI-* nat chains that appeared while the node ran (portmap's)."""
    ours = [c for c in _cni_chains() if c not in keep]
    if not ours:
        return
    rules = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True,
                           text=True).stdout.splitlines()
    for rule in rules:  # jumps into our chains from the built-in ones first
        parts = rule.split()
        if parts[:1] == ["-A"] and "-j" in parts and parts[parts.index("-j") + 1] in ours:
            subprocess.run(["iptables", "-t", "nat", "-D", *parts[1:]], capture_output=True)
    for chain in ours:
        subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True)
    for chain in ours:
        subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True)


def _hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, name=systemd, unified)."""
    return [h for h in Path("/sys/fs/cgroup").iterdir()
            if h.is_dir() and (h / "cgroup.procs").exists()]


def _make_cgroup_root(root: str) -> None:
    """The kubelet's cgroupRoot must exist in every hierarchy before it starts."""
    for hierarchy in _hierarchies():
        directory = hierarchy / root.lstrip("/")
        directory.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":  # a new cpuset has no CPUs until given its parent's
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (directory / knob).write_text((hierarchy / knob).read_text())


def _remove_cgroup_tree(root: str) -> None:
    """A kubelet's cgroup tree, deepest first, once its processes are gone."""
    for hierarchy in _hierarchies():
        top = hierarchy / root.lstrip("/")
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()),
                                key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _read_sysctls() -> dict[str, str]:
    values = {}
    for key in KUBELET_SYSCTLS:
        with contextlib.suppress(OSError):
            values[key] = Path(f"/proc/sys/{key}").read_text().strip()
    return values


def _write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        with contextlib.suppress(OSError):
            current = Path(f"/proc/sys/{key}").read_text().strip()
            if current != value:
                Path(f"/proc/sys/{key}").write_text(value)
