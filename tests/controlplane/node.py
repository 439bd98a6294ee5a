"""A real node for the test cluster: pods really run (containerd + runc), in a netns of its own.

    python tests/controlplane/node.py --workdir /tmp/rn      # up until Ctrl-C (builds first)

From Python (tests/e2e/conftest.py's `real_cluster` fixture does this):

    with NodeCluster(cp_bin, node_bin, workdir, images=images) as c:
        c.kubectl("get", "nodes")          # kubectl/helm run inside the cluster's netns
        api = c.api_client()               # from here, through the socket bridge

The whole cluster lives in ONE network namespace, `llmtrain-node`, created here: etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy,
CoreDNS, and the kubectl/helm that tests run. It has no external interface and no default
route, so nothing in it can reach the world, and nothing is configured in the root
namespace (no address, route, forwarding or iptables rule). Inside it:

    lo                 127.0.0.1: etcd, controller-manager, scheduler, health probes
    llm0 (bridge)      10.199.0.2/24, the node IP: apiserver, kubelet, CoreDNS (:53)
    llmcni0 (bridge)   10.244.0.1/24, the CNI bridge; one veth per pod (host-local IPAM)
    Services           10.96.0.0/16, kube-proxy's iptables rules in this netns

The apiserver listens on 0.0.0.0:P inside, where P is a port that is free on the host's
127.0.0.1. Two socat processes bridge the namespaces through a unix socket (a file, which
both namespaces see):

    root netns:  127.0.0.1:P --socat--> WORKDIR/apiserver.sock
    node netns:  WORKDIR/apiserver.sock --socat--> 127.0.0.1:P

so https://127.0.0.1:P names the apiserver on both sides and every kubeconfig works in
either: the test process, the kubernetes client and an operator run from the tests talk to
127.0.0.1 only. Probes of in-netns ports run on one thread that joined the netns (setns).

Settings that a real node on this kind of host needs (tests/controlplane/README.md):
failCgroupV1: false and cgroupDriver: cgroupfs; containerd's restrict_oom_score_adj (no
CAP_SYS_RESOURCE); a non-loopback node IP; --kubelet-preferred-address-types=InternalIP;
clusterDNS plus a resolv.conf of our own; the CNI conflist written before containerd starts;
private paths for every state dir that can be moved.

One real node per machine: fixed names (the netns, the cgroup root, kernel-fixed paths) and
the containerd store (shared with tests/images/build.sh) are guarded by a lock, and what a
crashed run left behind is cleaned before starting.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _cluster_module() -> Any:
    # tests/ is no package: share the module object tests/cluster/conftest.py loads.
    name = "llmtrain_tests_controlplane"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "cluster.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


cp = _cluster_module()
T = TypeVar("T")

NETNS = "llmtrain-node"
NETNS_PATH = Path("/run/netns") / NETNS
NODE_NAME = "llmtrain-node"
NODE_IP = "10.199.0.2"
NODE_BRIDGE = "llm0"
CNI_BRIDGE = "llmcni0"
CNI_NETWORK = "llmtrain-test"
POD_SUBNET = "10.244.0.0/24"
POD_CIDR = "10.244.0.0/16"
CLUSTER_DOMAIN = "cluster.local"
# kubepods and every pod cgroup go below this, in each v1 hierarchy: ours, so cleanup knows
# which processes to kill (a container outlives a killed shim).
CGROUP_ROOT = "/llmtrain-node"
CGROUP_FS = Path("/sys/fs/cgroup")
PVC_NAME = "llm-storage"
# Where a crashed run's work dir is recorded (tmpfs: a reboot clears everything anyway).
STATE_FILE = Path("/run/llmtrain-node.json")
# Kernel- or binary-fixed paths that the node writes whatever its config says.
FIXED_DIRS = [Path("/var/lib/kubelet/device-plugins"), Path("/var/log/containers")]
CNI_CACHE = Path("/var/lib/cni")
SHIM_SOCKETS = Path("/run/containerd/s")
CLONE_NEWNET = 0x40000000


class PrerequisiteMissing(RuntimeError):
    """A host tool or permission the real node (or its build) needs is not there."""


def _cache() -> Path:
    return Path(os.environ.get("LLMTRAIN_CACHE") or Path.home() / ".cache" / "llmtrain")


def build_node(timeout: float | None = None) -> Path:
    """Run nodebuild/build.sh (kubelet, kube-proxy, CoreDNS); return the bin dir.
    Raises cp.GoMissing or CalledProcessError."""
    try:
        return Path(_run_build(HERE / "nodebuild" / "build.sh", timeout)[-1])
    except PrerequisiteMissing as e:
        raise cp.GoMissing(str(e)) from None


def build_images(timeout: float | None = None) -> dict[str, str]:
    """Run tests/images/build.sh; return {operator, trainer, pause, containerd_root: ...}.
    Raises PrerequisiteMissing (buildah, debootstrap, uv... not installed) or
    CalledProcessError."""
    lines = _run_build(REPO / "tests" / "images" / "build.sh", timeout)
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _run_build(script: Path, timeout: float | None) -> list[str]:
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=timeout)
    sys.stderr.write(proc.stderr)  # progress and timings: pytest shows them with -s
    if proc.returncode == 127:
        lines = proc.stderr.strip().splitlines()
        raise PrerequisiteMissing(lines[-1] if lines else f"{script}: a tool is missing")
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, str(script), proc.stdout,
                                            proc.stderr)
    return proc.stdout.strip().splitlines()


def prerequisites() -> list[str]:
    """What this host lacks for a real node; empty when it can run one."""
    missing = []
    if sys.platform != "linux":
        return ["Linux"]
    if os.geteuid() != 0:
        missing.append("root (network namespaces, cgroups, mounts)")
    for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "socat",
                 "nsenter", "ip", "sysctl"):
        if not shutil.which(tool):
            missing.append(tool)
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("CNI plugins (/usr/lib/cni)")
    if not (CGROUP_FS / "memory").is_dir():
        missing.append("cgroup v1 memory hierarchy")
    return missing


# ---- the netns --------------------------------------------------------------------------------


def _ns_argv(argv: Sequence[str]) -> list[str]:
    # Not `ip netns exec`: that also remounts /sys, which hides the cgroup mounts.
    return ["nsenter", f"--net={NETNS_PATH}", "--", *argv]


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise cp.StartError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


class _InNetns:
    """Runs callables on one thread that has joined the netns (setns is per thread)."""

    def __init__(self, path: Path):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="netns",
                                        initializer=self._enter, initargs=(str(path),))

    @staticmethod
    def _enter(path: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns({path})")
        finally:
            os.close(fd)

    def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---- the cluster ------------------------------------------------------------------------------


@dataclass
class NodeCluster(cp.Cluster):  # type: ignore[misc,name-defined]
    """The test control plane plus one real node, all in the `llmtrain-node` netns.

    `images` is build_images()'s result: the operator/trainer image refs, and the containerd
    store they were imported into (containerd runs on it, so nothing is imported here).
    """

    node_bin: Path = Path()
    images: dict[str, str] = field(default_factory=dict)
    nodes: int = 0  # kwok nodes besides the real one (none in the tests)
    pod_cidr: str = "10.245.0.0/16"  # kwok's fake pods, apart from the real ones'
    # Seconds: control_plane, node_ready (kubelet start to Ready), start (all of it).
    timings: dict[str, float] = field(default_factory=dict)
    _lock_fd: int | None = field(default=None, init=False, repr=False)
    _ns: _InNetns | None = field(default=None, init=False, repr=False)
    _t0: float = field(default=0.0, init=False, repr=False)

    # ---- what tests use ----------------------------------------------------------------

    node_name = NODE_NAME
    node_ip = NODE_IP
    pvc_name = PVC_NAME

    @property
    def operator_image(self) -> str:
        return self.images["operator"]

    @property
    def trainer_image(self) -> str:
        return self.images["trainer"]

    def chart_image_values(self, pull_policy: str = "Never") -> list[str]:
        """`--set` values that point charts/llmtrain at the test images."""
        op_repo, op_tag = self.operator_image.rsplit(":", 1)
        tr_repo, tr_tag = self.trainer_image.rsplit(":", 1)
        return [f"image.repository={op_repo}", f"image.tag={op_tag}",
                f"image.pullPolicy={pull_policy}",
                f"jobDefaults.image.repository={tr_repo}", f"jobDefaults.image.tag={tr_tag}"]

    def create_pvc(self, namespace: str, name: str = PVC_NAME, size: str = "10Gi") -> Path:
        """A PVC bound to a hostPath PV of its own, writable by any uid; returns its dir.

        Static binding (no StorageClass): the PV's claimRef names the claim. ReadWriteMany
        and ReadWriteOnce are both offered: on one node they mean the same."""
        pv = f"{namespace}-{name}"
        path = self.workdir / "pv" / pv
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # fsGroup does not re-own hostPath volumes
        modes = ["ReadWriteOnce", "ReadWriteMany"]
        objects = [
            {"apiVersion": "v1", "kind": "PersistentVolume",
             "metadata": {"name": pv, "labels": {"llmtrain.io/test-pv": "true"}},
             "spec": {"capacity": {"storage": size}, "accessModes": modes,
                      "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                      "claimRef": {"namespace": namespace, "name": name},
                      "hostPath": {"path": str(path), "type": "Directory"}}},
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": name, "namespace": namespace},
             "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                      "volumeName": pv, "resources": {"requests": {"storage": size}}}},
        ]
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                           "items": objects}))
        self.wait_for(f"pvc {namespace}/{name} Bound", lambda: self.get(
            "pvc", name, namespace).get("status", {}).get("phase") == "Bound", 60)
        return path

    def advertise_gpus(self, count: int = 8) -> None:
        """Fake `nvidia.com/gpu` capacity on the real node (a status patch, as a device plugin
        would report it); pods that request GPUs then schedule, and see no GPU."""
        patch = {"status": {"capacity": {"nvidia.com/gpu": str(count)},
                            "allocatable": {"nvidia.com/gpu": str(count)}}}
        self.kubectl("patch", "node", NODE_NAME, "--subresource=status", "--type=merge",
                     "-p", json.dumps(patch))

    def wait_pod(self, namespace: str, name: str, phases: Sequence[str] = ("Running",),
                 timeout: float = 120) -> dict[str, Any]:
        """Wait until a pod is in one of `phases` (and Ready, for Running); return it."""
        pod: dict[str, Any] = {}

        def check() -> bool:
            nonlocal pod
            pod = self.get("pod", name, namespace)
            phase = pod.get("status", {}).get("phase")
            if phase == "Running" and "Running" in phases:
                return any(c["type"] == "Ready" and c["status"] == "True"
                           for c in pod["status"].get("conditions", []))
            return phase in phases

        self.wait_for(f"pod {namespace}/{name} {'/'.join(phases)}", check, timeout)
        return pod

    # ---- lifecycle ---------------------------------------------------------------------

    def _start(self) -> None:
        missing = prerequisites()
        if missing:
            raise PrerequisiteMissing(", ".join(missing))
        if not self.images.get("containerd_root"):
            raise cp.StartError("images has no containerd_root: run tests/images/build.sh")
        self._t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        _cleanup_stale()
        STATE_FILE.write_text(json.dumps({"workdir": str(self.workdir), "pid": os.getpid()}))
        self._setup_netns()
        self._ns = _InNetns(NETNS_PATH)
        self._write_cni()
        super()._start()  # control plane (in the netns through _proc), then _start_more()
        self.timings["start"] = time.monotonic() - self._t0

    def stop(self, grace: float = 5.0) -> None:
        """Kill everything, pods included, and remove every trace (mounts, cgroups, netns)."""
        if self._lock_fd is None:  # never started, or the lock is someone else's
            super().stop(grace)
            return
        kubelet = next((p for p in self.procs if p.name == "kubelet"), None)
        if kubelet:
            kubelet.signal(signal.SIGKILL)  # first, so it restarts nothing we kill below
            kubelet.wait(5)
        _kill_cgroup_procs()
        containerd = next((p for p in self.procs if p.name == "containerd"), None)
        if containerd and containerd.alive():
            # The pods' containers and writable snapshots would stay in the shared store.
            with contextlib.suppress(Exception):
                self._forget_old_containers()
        super().stop(grace)
        _kill_netns_procs()
        if self._ns:
            self._ns.close()
            self._ns = None
        _cleanup_paths(self.workdir)
        with contextlib.suppress(OSError):
            STATE_FILE.unlink()
        os.close(self._lock_fd)
        self._lock_fd = None

    def _take_lock(self) -> None:
        lock = Path(self.images["containerd_root"]).parent / ".lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + 60
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise cp.StartError(f"{lock} is held: another real-node cluster or an "
                                        "image build is running on this machine") from None
                time.sleep(1)
        self._lock_fd = fd

    def _setup_netns(self) -> None:
        _sh("ip", "netns", "add", NETNS)
        ip = ("ip", "-n", NETNS)
        _sh(*ip, "link", "set", "lo", "up")
        # A bridge without ports holds the node IP (this kernel has no dummy interfaces).
        _sh(*ip, "link", "add", NODE_BRIDGE, "type", "bridge")
        _sh(*ip, "addr", "add", f"{NODE_IP}/24", "dev", NODE_BRIDGE)
        _sh(*ip, "link", "set", NODE_BRIDGE, "up")
        # These sysctls are per netns: routing between pods and Services, and Service
        # replies between two pods on the CNI bridge go through conntrack.
        _sh(*_ns_argv(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
                       "net.bridge.bridge-nf-call-iptables=1"]))

    def _write_cni(self) -> None:
        # Before containerd starts: containerd 1.6 reads the CNI config once.
        conf_dir = self.workdir / "cni" / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "plugins": [
                {"type": "bridge", "bridge": CNI_BRIDGE, "isGateway": True,
                 "isDefaultGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                          "dataDir": str(self.workdir / "cni" / "ipam")}},
            ],
        }
        (conf_dir / "10-llmtrain.conflist").write_text(json.dumps(conflist, indent=2))

    def _make_pki(self) -> None:
        pki = self.pki
        cp._make_pki(pki, extra_sans=[f"IP:{NODE_IP}"])
        client = cp.CLIENT_EXT
        cp._leaf(pki, "kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}", client)
        cp._leaf(pki, "kubelet-serving", f"/CN={NODE_NAME}",
                 f"extendedKeyUsage=serverAuth\nsubjectAltName=IP:{NODE_IP},DNS:{NODE_NAME}\n")
        cp._leaf(pki, "apiserver-kubelet", "/O=system:masters/CN=kube-apiserver-kubelet-client",
                 client)
        cp._leaf(pki, "kube-proxy", "/CN=system:kube-proxy", client)  # system:node-proxier
        cp._leaf(pki, "coredns", "/O=system:masters/CN=coredns", client)

    def _apiserver_args(self) -> list[str]:
        pki = self.pki
        return [
            "--bind-address=0.0.0.0",  # inside the netns: 127.0.0.1 and the node IP
            f"--advertise-address={NODE_IP}",  # the `kubernetes` Service's endpoint
            "--endpoint-reconciler-type=lease",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            # Otherwise logs/exec look the node's name up in the host's DNS.
            "--kubelet-preferred-address-types=InternalIP",
            "--enable-admission-plugins=NodeRestriction",
        ]

    def _argv(self, argv: list[str]) -> list[str]:
        return _ns_argv(argv)  # every component, kubectl and helm: inside the netns

    def _http_get(self, url: str, insecure: bool = False) -> bytes:
        assert self._ns is not None
        return self._ns(cp._http_get, url, insecure)

    def _api_get(self, path: str) -> bytes:
        assert self._ns is not None
        return self._ns(super()._api_get, path)  # type: ignore[no-any-return]

    def _start_more(self) -> None:
        t = time.monotonic()
        self.timings["control_plane"] = t - self._t0
        self._start_bridge()
        self._start_containerd()
        self._start_coredns()
        self._start_kube_proxy()
        self._start_kubelet()
        cp._poll(f"node {NODE_NAME} Ready", self._node_ready, self.start_timeout, self.procs)
        self.timings["node_ready"] = time.monotonic() - t
        cp._poll("CoreDNS ready",
                 lambda: self._http_get("http://127.0.0.1:18181/ready") == b"OK",
                 self.start_timeout, self.procs)
        cp._poll("kube-proxy healthz", lambda: b"lastUpdated" in self._http_get(
            "http://127.0.0.1:10256/healthz"), self.start_timeout, self.procs)

    # ---- the node's pieces ---------------------------------------------------------------

    def _kubeconfig_file(self, name: str) -> Path:
        path = self.workdir / f"{name}.kubeconfig"
        user = {"client-certificate": str(self.pki / f"{name}.crt"),
                "client-key": str(self.pki / f"{name}.key")}
        path.write_text(cp._kubeconfig(self.api_url, self.pki / "ca.crt", user))
        return path

    def _start_bridge(self) -> None:
        port = self.api_url.rsplit(":", 1)[1]
        sock = self.workdir / "apiserver.sock"
        inner = self._proc("bridge-netns", [
            "socat", f"UNIX-LISTEN:{sock},fork,unlink-early,mode=600", f"TCP:127.0.0.1:{port}"])
        inner.start(self._env())
        cp._poll("apiserver.sock", sock.exists, 10, [inner])
        # The root-netns end: started without nsenter, listening on the host's loopback only.
        outer = cp.Process("bridge-host", [
            "socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{sock}"],
            self.workdir / "logs" / "bridge-host.log")
        self.procs.append(outer)
        outer.start(self._env())
        cp._poll("the apiserver through the bridge",
                 lambda: cp.Cluster._api_get(self, "/readyz") == b"ok", 30, [inner, outer])

    @property
    def containerd_sock(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def ctr(self, *args: str, check: bool = True) -> str:
        """ctr against the node's containerd, in the k8s.io namespace (the CRI's)."""
        proc = subprocess.run(["ctr", "--address", str(self.containerd_sock),
                               "--namespace", "k8s.io", *args],
                              capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def _start_containerd(self) -> None:
        d = self.workdir / "containerd"
        d.mkdir(parents=True, exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{self.images['containerd_root']}"
state = "{d / 'state'}"
[grpc]
  address = "{self.containerd_sock}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"
[{cri}]
  sandbox_image = "{self.images['pause']}"
  # runc would set the sandbox's oom_score_adj to -998, which needs CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{d / 'runc'}"
[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{self.workdir / 'cni' / 'net.d'}"
  max_conf_num = 1
"""
        (d / "config.toml").write_text(config)
        p = self._proc("containerd", ["containerd", "--config", str(d / "config.toml")])
        p.start(self._env())
        cp._poll("containerd", lambda: self.ctr("version") != "", 30, [p])
        self._forget_old_containers()

    def _forget_old_containers(self) -> None:
        # A crashed run leaves containers (and their writable snapshots) in the shared store;
        # their shims and processes were killed by _cleanup_stale().
        for cid in self.ctr("containers", "ls", "-q", check=False).split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
            self.ctr("tasks", "rm", "-f", cid, check=False)
            self.ctr("containers", "rm", cid, check=False)
        for line in self.ctr("snapshots", "ls", check=False).splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "Active":
                self.ctr("snapshots", "rm", parts[0], check=False)

    def _start_coredns(self) -> None:
        kubeconfig = self._kubeconfig_file("coredns")
        corefile = self.workdir / "Corefile"
        # No `forward`: a name outside cluster.local gets SERVFAIL, never an upstream query.
        corefile.write_text(f""".:53 {{
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} llmtrain-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
}}
""")
        p = self._proc("coredns", [str(self.node_bin / "coredns"), "-conf", str(corefile)])
        p.start(self._env())

    def _start_kube_proxy(self) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self._kubeconfig_file("kube-proxy"))},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # Leave the host-wide conntrack table alone, and our oom_score_adj (needs
            # CAP_SYS_RESOURCE to lower).
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
            "oomScoreAdj": 0,
            "iptables": {"localhostNodePorts": False},
        }
        path = self.workdir / "kube-proxy.yaml"
        path.write_text(json.dumps(config, indent=2))
        p = self._proc("kube-proxy", [str(self.node_bin / "kube-proxy"), f"--config={path}"])
        p.start(self._env())

    def _start_kubelet(self) -> None:
        w = self.workdir
        for ctrl in _cgroup_controllers():
            (CGROUP_FS / ctrl / CGROUP_ROOT.lstrip("/")).mkdir(exist_ok=True)
        (w / "resolv.conf").write_text(f"nameserver {NODE_IP}\noptions ndots:5\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # Kubelet 1.35 refuses cgroup v1 unless told; this host has no systemd.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": CGROUP_ROOT,
            "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "tlsCertFile": str(self.pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(self.pki / "kubelet-serving.key"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.pki / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [NODE_IP],
            # Not the host's resolv.conf: pods with dnsPolicy Default get this one too.
            "resolvConf": str(w / "resolv.conf"),
            "podLogsDir": str(w / "pod-logs"),
            "volumePluginDir": str(w / "volume-plugins"),
            "failSwapOn": False,
            # The cached images must stay: no image GC, and eviction only near the edge.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "serializeImagePulls": False,
            "maxPods": 110,
            "shutdownGracePeriod": "0s",
        }
        path = w / "kubelet.yaml"
        path.write_text(json.dumps(config, indent=2))
        p = self._proc("kubelet", [
            str(self.node_bin / "kubelet"),
            f"--config={path}",
            f"--kubeconfig={self._kubeconfig_file('kubelet')}",
            f"--root-dir={w / 'kubelet'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            "--node-labels=llmtrain.io/test-node=real",
            "--v=1",
        ])
        p.start(self._env())

    def _node_ready(self) -> bool:
        node = json.loads(self.kubectl("get", "node", NODE_NAME, "-o", "json"))
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in node.get("status", {}).get("conditions", []))


# ---- cleanup: this run's, or what a crashed run left -----------------------------------------


def _cgroup_controllers(unified: bool = False) -> list[str]:
    """The v1 hierarchies (plus the empty cgroup2 `unified` mount, where runc also makes
    directories)."""
    return sorted(p.name for p in CGROUP_FS.iterdir()
                  if p.is_dir() and not p.is_symlink() and (p / "cgroup.procs").exists()
                  and (unified or p.name != "unified"))


def _kill_cgroup_procs() -> None:
    """SIGKILL every process in a cgroup below CGROUP_ROOT (the pods' containers)."""
    for _ in range(50):
        pids = set()
        for ctrl in _cgroup_controllers(unified=True):
            base = CGROUP_FS / ctrl / CGROUP_ROOT.lstrip("/")
            if base.is_dir():
                for procs in base.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError):
                        pids.update(int(x) for x in procs.read_text().split())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _kill_netns_procs() -> None:
    """SIGKILL every process whose network namespace is ours (shims, socat children...)."""
    try:
        ours = os.stat(NETNS_PATH)
    except OSError:
        return
    me = os.getpid()
    for _ in range(50):
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == me:
                continue
            with contextlib.suppress(OSError):
                st = os.stat(d / "ns" / "net")
                if (st.st_ino, st.st_dev) == (ours.st_ino, ours.st_dev):
                    found.append(int(d.name))
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _mounts_under(prefix: Path) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # Field 5 is the mount point, with spaces etc. escaped as octal.
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(prefix) or point.startswith(f"{prefix}/"):
                out.append(point)
    return out


def _cleanup_paths(workdir: Path | None) -> None:
    """Unmount and remove everything the node left: mounts, netns, cgroups, fixed paths."""
    for _ in range(3):
        points = _mounts_under(workdir) if workdir else []
        if not points:
            break
        for point in sorted(points, key=len, reverse=True):  # children first
            subprocess.run(["umount", "-l", point], capture_output=True)
    if NETNS_PATH.exists():
        _sh("ip", "netns", "del", NETNS, check=False)
    # `ip netns add` made /run/netns a mount point of its own; undo that once it is empty.
    if NETNS_PATH.parent.is_dir() and not any(NETNS_PATH.parent.iterdir()):
        subprocess.run(["umount", str(NETNS_PATH.parent)], capture_output=True)
        with contextlib.suppress(OSError):
            NETNS_PATH.parent.rmdir()
    for ctrl in _cgroup_controllers(unified=True) if CGROUP_FS.is_dir() else []:
        base = CGROUP_FS / ctrl / CGROUP_ROOT.lstrip("/")
        if base.is_dir():
            for d in sorted((p for p in base.rglob("*") if p.is_dir()),
                            key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()
    for d in FIXED_DIRS:
        if d.name == "containers" and d.is_dir():
            # Symlinks into our pod logs: dangling once the work dir goes, or pointing there.
            for link in d.iterdir():
                target = os.readlink(link) if link.is_symlink() else ""
                if workdir and (target.startswith(f"{workdir}/") or not link.exists()):
                    link.unlink()
            with contextlib.suppress(OSError):
                d.rmdir()
        else:
            shutil.rmtree(d, ignore_errors=True)
    with contextlib.suppress(OSError):
        Path("/var/lib/kubelet").rmdir()  # only if nothing else lives there
    results = CNI_CACHE / "results"
    if results.is_dir():
        # Ours, and containerd's loopback network (its results are a cache; no other CNI user
        # runs on these machines while we hold the lock).
        for f in [*results.glob(f"{CNI_NETWORK}-*"), *results.glob("cni-loopback-*")]:
            f.unlink()
    for d in (results, CNI_CACHE / "networks", CNI_CACHE):
        with contextlib.suppress(OSError):
            d.rmdir()
    # Shim sockets nobody listens on any more (shims we killed could not remove theirs).
    if SHIM_SOCKETS.is_dir():
        for s in SHIM_SOCKETS.iterdir():
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as c:
                try:
                    c.connect(str(s))
                except (ConnectionRefusedError, FileNotFoundError):
                    s.unlink()
        for d in (SHIM_SOCKETS, SHIM_SOCKETS.parent):
            with contextlib.suppress(OSError):
                d.rmdir()


def _cleanup_stale() -> None:
    """Before a start: what a run that died without stop() left (we hold the lock)."""
    workdir = None
    with contextlib.suppress(OSError, ValueError, KeyError):
        workdir = Path(json.loads(STATE_FILE.read_text())["workdir"])
    _kill_cgroup_procs()
    _kill_netns_procs()
    _cleanup_paths(workdir)
    if NETNS_PATH.exists():  # `ip netns del` failed: the bind mount is busy
        raise cp.StartError(f"could not remove the stale netns {NETNS_PATH}")


# ---- standalone -------------------------------------------------------------------------------


@contextlib.contextmanager
def running(workdir: Path | None = None) -> Iterator[NodeCluster]:
    """Build (cached) and run a real-node cluster for the duration of the block."""
    bin_dir, node_bin, images = cp.build(), build_node(), build_images()
    tmp = None if workdir else Path(tempfile.mkdtemp(prefix="llmtrain-node-"))
    try:
        with NodeCluster(bin_dir, workdir or tmp or Path(), node_bin=node_bin,
                         images=images) as c:
            yield c
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the real-node test cluster until Ctrl-C.")
    ap.add_argument("--workdir", type=Path, help="keep kubeconfig, PKI and logs here")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, cp._interrupt)
    try:
        with running(args.workdir) as c:
            print(f"up: {c.api_url} (node {NODE_IP} in netns {NETNS}), logs in "
                  f"{c.workdir / 'logs'}", file=sys.stderr)
            print(f"images: {c.images}", file=sys.stderr)
            print(f"nsenter --net={NETNS_PATH} {c.bin_dir / 'kubectl'} "
                  f"--kubeconfig={c.kubeconfig} get pods -A", file=sys.stderr)
            print(c.kubeconfig, flush=True)
            while all(p.alive() for p in c.procs):
                time.sleep(1)
            dead = [p.name for p in c.procs if not p.alive()]
            print(f"{', '.join(dead)} exited:\n{c.log_tails()}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
