"""The local control plane kubemaas is developed and tested against.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from Go
modules (hack/build-testbed), with kwok simulating the nodes and their
kubelets. Nothing here is a fake of the Kubernetes API: only the nodes are
simulated.
"""
