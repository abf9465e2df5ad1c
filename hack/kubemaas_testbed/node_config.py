"""What the real node's components are configured with: the CNI network, containerd's
config.toml and the kubelet's KubeletConfiguration (node.py's RealNode writes them in `up`).
docs/real-node.md explains every setting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .node_host import CNI_BIN
from .node_slots import Slot

if TYPE_CHECKING:
    from .node import RealNode

NETWORK_NAME = "kubemaas-real-node"
LABEL = "kubemaas.io/real-node"
# Pods land here only when they ask to (nodeSelector LABEL=true and this toleration):
# a stray pod with a registry image would otherwise make the node try to pull it.
TAINT = {"key": LABEL, "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}


def cni_conflist(node: RealNode, slot: Slot) -> dict[str, Any]:
    return {
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
                    "dataDir": str(node.dir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def containerd_config(node: RealNode, sandbox_image: str) -> str:
    d = node.dir / "containerd"
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
  address = "{node.containerd_socket}"

[ttrpc]
  address = "{node.containerd_socket}.ttrpc"

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
    conf_dir = "{node.dir / 'cni' / 'net.d'}"
    max_conf_num = 1
'''


# The disk is shared with other work: its usage says nothing about the node, and
# image GC would delete the images we imported (they cannot be pulled again).
# No eviction for disk at all ("0%" turns a signal off; a signal left out would
# take the kubelet's default): under disk pressure the kubelet first reclaims
# unused images, our pause image among them (containerd 1.6 does not pin its
# sandbox image), and every later pod then fails to get a sandbox. A dip caused by
# other work on the machine (CI saw 72 MB free during the language-model image's
# test) would take the rest of the suite down with it; a disk that really fills
# fails the write that needed it, which says so. Memory keeps its threshold, and a
# pressure the kubelet saw lifts 10 s after it ends, not after the default 5 min
# (docs/real-node.md).
DISK_AND_EVICTION: dict[str, Any] = {
    "imageGCHighThresholdPercent": 100,
    "imageGCLowThresholdPercent": 99,
    "evictionHard": {"memory.available": "100Mi",
                     "nodefs.available": "0%", "nodefs.inodesFree": "0%",
                     "imagefs.available": "0%", "imagefs.inodesFree": "0%"},
    "evictionPressureTransitionPeriod": "10s",
}


def kubelet_config(node: RealNode, slot: Slot, port: int, healthz_port: int) -> dict[str, Any]:
    p = node.cluster_state / "pki"
    k = node.dir / "kubelet"
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
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "imageServiceEndpoint": f"unix://{node.containerd_socket}",
        # The kubelet's API (logs, exec, port-forward) listens on our bridge's
        # address only: the node's InternalIP, which the apiserver dials.
        "address": slot.gateway,
        "port": port,  # a free port: several nodes may share the machine
        "readOnlyPort": 0,  # no unauthenticated port
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        # A serving certificate from the testbed's CA (no CSR approval loop).
        "tlsCertFile": str(p / f"kubelet-{node.name}.crt"),
        "tlsPrivateKeyFile": str(p / f"kubelet-{node.name}.key"),
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
        "podLogsDir": str(node.dir / "pod-logs"),
        "volumePluginDir": str(k / "volume-plugins"),
        # No kube-proxy here, so nothing needs the kubelet's iptables chains;
        # the host's iptables stay as they were.
        "makeIPTablesUtilChains": False,
        # Machines with swap must still run the node (pods get no swap: the
        # default swapBehavior is NoSwap).
        "failSwapOn": False,
        **DISK_AND_EVICTION,
        # No cluster DNS and nowhere to resolve to: pods get no host resolver.
        "resolvConf": "",
        "clusterDomain": "cluster.local",
        "maxPods": 16,  # the pod subnet is a /24; the machine has 2 cores
        "registerNode": True,
        # Pods opt in (nodeSelector + toleration): see TAINT.
        "registerWithTaints": [TAINT],
    }
