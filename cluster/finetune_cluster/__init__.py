"""A real Kubernetes control plane on 127.0.0.1 for contributors and tests.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are built from their Go
modules (`cluster/k8s`, `cluster/etcd`; `build.py`), started by `controlplane.py`, and a
small kubelet (`node_agent.py`) runs the pods the scheduler binds as local processes.
`make cluster` / `make cluster-down` drive it; docs/cluster.md says what it is and is not.
"""
