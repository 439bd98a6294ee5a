"""A real Kubernetes control plane on loopback, for tests and for humans.

    tests/controlplane/up.sh        # build (cached), start, print the kubeconfig; Ctrl-C stops
    python tests/controlplane/cluster.py --nodes 3 --workdir /tmp/cp

From Python (the pytest fixture in tests/cluster/conftest.py does this):

    bin_dir = build()                       # tests/controlplane/build.sh; instant when cached
    with Cluster(bin_dir, workdir) as c:    # etcd, kube-apiserver, kube-controller-manager,
        c.kubectl("get", "nodes")           # kube-scheduler, kwok with fake GPU nodes
        api = c.api_client()                # kubernetes.client.ApiClient as cluster-admin

Everything listens on 127.0.0.1 on free ports, and kwok's pod IPs and node IPs are in
127.0.0.0/8, so nothing leaves loopback. The price: EndpointSlice validation rejects
loopback addresses, so Services never get endpoints here (pass another `pod_cidr`, e.g.
the never-routed 198.18.0.0/15, if a test needs them). Each component runs in its own process group
and is killed with it on stop(); on Linux the kernel also kills them if we die first.

Standard library only (kubernetes is imported lazily by api_client()), so up.sh runs
with any python3.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KWOK_STAGES = HERE / "kwok" / "stages.yaml"

# Every node advertises the same shape: a typical 8-GPU training box.
NODE_CAPACITY = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"}
NODE_ANNOTATION = "kwok.x-k8s.io/node"
POD_CIDR = "127.100.0.0/16"
NODE_IP = "127.0.0.1"
# Virtual addresses only: there is no kube-proxy, so nothing ever connects to them.
SERVICE_CIDR = "10.96.0.0/16"
ADMIN_USER = "llmtrain-admin"


class GoMissing(RuntimeError):
    """The binaries are not cached and there is no Go toolchain to build them."""


class StartError(RuntimeError):
    """A component did not come up; the message ends with the components' log tails."""


class ProcessExited(StartError):
    """A component exited during start-up."""


class KubectlError(RuntimeError):
    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr
        super().__init__(f"kubectl {' '.join(args)} exited {returncode}: {stderr.strip()}")


def build(timeout: float | None = None) -> Path:
    """Run build.sh and return the bin dir. Raises GoMissing or CalledProcessError."""
    proc = subprocess.run(
        [str(HERE / "build.sh")], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode == 127:
        raise GoMissing("go not found on PATH")
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(
            proc.returncode, "tests/controlplane/build.sh", proc.stdout, proc.stderr
        )
    return Path(proc.stdout.strip().splitlines()[-1])


def _free_ports(n: int) -> list[int]:
    # Hold all sockets open until every port is picked, so the n ports are distinct.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: if pytest is SIGKILLed, the kernel kills the component too.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


@dataclass
class Process:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group, so stop() gets everything
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        # Only while the leader is unreaped: then its pgid (== pid, thanks to
        # start_new_session) cannot have been reused by anyone else.
        if self.alive():
            assert self.popen is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float) -> bool:
        if self.popen is None:
            return True
        try:
            self.popen.wait(max(timeout, 0.01))
            return True
        except subprocess.TimeoutExpired:
            return False

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


# P-256 for TLS (key generation is ~100x faster than RSA); RSA for the SA signing key.
_EC = ("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
CLIENT_EXT = "extendedKeyUsage=clientAuth\n"


def _leaf(d: Path, name: str, subj: str, ext: str) -> None:
    """d/name.{key,crt}: a P-256 key and a cert from the CA in d, with extensions `ext`."""
    _openssl(*_EC, "-out", f"{name}.key", cwd=d)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subj, "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n" + ext
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "365", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
        cwd=d,
    )


def _make_pki(d: Path, extra_sans: Sequence[str] = ()) -> None:
    """A CA, the apiserver's serving cert, client certs per component, the SA key."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl(*_EC, "-out", "ca.key", cwd=d)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=llmtrain-test-ca",
        "-days", "3650", "-out", "ca.crt",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=d,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)

    def leaf(name: str, subj: str, ext: str) -> None:
        _leaf(d, name, subj, ext)

    sans = ",".join(
        ["IP:127.0.0.1", "IP:10.96.0.1", "DNS:localhost", "DNS:kubernetes",
         "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
         "DNS:kubernetes.default.svc.cluster.local", *extra_sans]
    )
    leaf("apiserver", "/CN=kube-apiserver", f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n")
    client = CLIENT_EXT
    leaf("admin", f"/O=system:masters/CN={ADMIN_USER}", client)
    leaf("kcm", "/CN=system:kube-controller-manager", client)
    leaf("scheduler", "/CN=system:kube-scheduler", client)
    leaf("kwok", "/O=system:masters/CN=kwok-controller", client)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _kubeconfig(server: str, ca: Path, user: dict[str, str], name: str = "llmtrain-test") -> str:
    # JSON is YAML, and kubectl, client-go and the python client all read it.
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": name,
                    "cluster": {"server": server, "certificate-authority-data": _b64(ca)},
                }
            ],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
        },
        indent=2,
    )


def _poll(what: str, check: Callable[[], bool], timeout: float, procs: Sequence[Process]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            if not p.alive():
                raise ProcessExited(f"{p.name} exited while waiting for {what}")
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise StartError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


@dataclass
class Cluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok."""

    bin_dir: Path
    workdir: Path
    nodes: int = 2
    pod_cidr: str = POD_CIDR
    start_timeout: float = 180.0
    api_url: str = ""
    procs: list[Process] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def node_names(self) -> list[str]:
        return [f"kwok-node-{i}" for i in range(self.nodes)]

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for attempt in (1, 2):
            try:
                self._start()
                return
            except BaseException as e:
                tails = self.log_tails()
                self.stop()
                # A free port can be taken between our pick and the component's bind, and
                # then the component exits at once: worth exactly one more try.
                if attempt == 1 and isinstance(e, ProcessExited):
                    self.procs.clear()
                    continue
                if isinstance(e, StartError | KubectlError | subprocess.SubprocessError | OSError):
                    raise StartError(f"{e}\n\n{tails}") from e
                raise

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        # Fresh PKI and ports each start, so old etcd data would not match; start clean.
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        self._make_pki()
        etcd_port, peer_port, api_port, kcm_port, sched_port = _free_ports(5)
        self.api_url = f"https://127.0.0.1:{api_port}"
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        pki = self.pki

        def cert_user(name: str) -> dict[str, str]:
            return {
                "client-certificate-data": _b64(pki / f"{name}.crt"),
                "client-key-data": _b64(pki / f"{name}.key"),
            }

        self.kubeconfig.write_text(_kubeconfig(self.api_url, pki / "ca.crt", cert_user("admin")))
        for name in ("kcm", "scheduler", "kwok"):
            (self.workdir / f"{name}.kubeconfig").write_text(
                _kubeconfig(self.api_url, pki / "ca.crt", cert_user(name))
            )
        self._write_kwok_config()

        b = self.bin_dir
        etcd = self._proc("etcd", [
            str(b / "etcd"), "--name=default", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync", "--log-level=warn",
        ])
        etcd.start(self._env())
        _poll("etcd /health", lambda: b'"true"' in self._http_get(f"{etcd_url}/health"), 30,
              [etcd])

        api = self._proc("kube-apiserver", [
            str(b / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The reconciler would publish 127.0.0.1 as the `kubernetes` Service's endpoint,
            # which Endpoints validation rejects (loopback), and log that every 10s.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            *self._apiserver_args(),
        ])
        api.start(self._env())
        _poll("kube-apiserver /readyz", lambda: self._api_get("/readyz") == b"ok",
              self.start_timeout, [etcd, api])

        kcm = self._proc("kube-controller-manager", [
            str(b / "kube-controller-manager"),
            f"--kubeconfig={self.workdir / 'kcm.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={kcm_port}",
            "--leader-elect=false", "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--allocate-node-cidrs=false",
            # A claim seen before its pre-bound PV waits for the binder's resync (15 s by
            # default): most of each cluster test's setup. Resyncing every second costs little.
            "--pvclaimbinder-sync-period=1s",
        ])
        sched = self._proc("kube-scheduler", [
            str(b / "kube-scheduler"),
            f"--kubeconfig={self.workdir / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={sched_port}", "--leader-elect=false",
        ])
        for p in (kcm, sched):
            p.start(self._env())
        if self.nodes:
            kwok = self._proc("kwok", [
                str(b / "kwok"),
                f"--kubeconfig={self.workdir / 'kwok.kubeconfig'}",
                f"--config={self.workdir / 'kwok.yaml'}",
            ])
            kwok.start(self._env())
            self._create_nodes()

        _poll("kube-controller-manager /healthz",
              lambda: self._http_get(f"https://127.0.0.1:{kcm_port}/healthz", True) == b"ok",
              self.start_timeout, self.procs)
        _poll("kube-scheduler /healthz",
              lambda: self._http_get(f"https://127.0.0.1:{sched_port}/healthz", True) == b"ok",
              self.start_timeout, self.procs)
        _poll(f"{self.nodes} kwok nodes Ready", self._nodes_ready, self.start_timeout, self.procs)
        # The serviceaccount controller is live once `default` exists; pods need it.
        _poll("serviceaccount default/default",
              lambda: self._api_get("/api/v1/namespaces/default/serviceaccounts/default") != b"",
              self.start_timeout, self.procs)
        self._start_more()

    def stop(self, grace: float = 5.0) -> None:
        """Stop the clients with SIGTERM, then SIGKILL every process group that is left.

        The state is throwaway, so kube-apiserver and etcd are killed outright: their
        graceful drain takes 10s or more and protects nothing here.
        """
        for p in self.procs:
            if p.name not in ("etcd", "kube-apiserver"):
                p.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            if p.name not in ("etcd", "kube-apiserver"):
                p.wait(deadline - time.monotonic())
        for p in reversed(self.procs):
            p.signal(signal.SIGKILL)
            p.wait(5)

    # ---- helpers for tests -----------------------------------------------------------------

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A kubernetes.client.ApiClient, as cluster-admin unless given another kubeconfig."""
        from kubernetes import config

        path = str(kubeconfig or self.kubeconfig)
        return config.new_client_from_config(config_file=path)  # type: ignore[no-untyped-call]

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True,
        kubeconfig: Path | None = None, timeout: float = 60,
    ) -> str:
        """Run kubectl against this cluster and return stdout; raises KubectlError."""
        proc = subprocess.run(self._kubectl_argv(args, kubeconfig), input=input,
                              capture_output=True, text=True, env=self._env(), timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(args, proc.returncode, proc.stdout, proc.stderr)
        return proc.stdout

    def kubectl_popen(self, *args: str) -> subprocess.Popen[str]:
        """kubectl started against this cluster, its stdout a text pipe (a --watch, say)."""
        return subprocess.Popen(self._kubectl_argv(args), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=self._env(), text=True)

    def _kubectl_argv(self, args: Sequence[str], kubeconfig: Path | None = None) -> list[str]:
        return self._argv([str(self.bin_dir / "kubectl"),
                           f"--kubeconfig={kubeconfig or self.kubeconfig}", *args])

    def helm(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """Run helm v3 against this cluster, with its caches inside the workdir."""
        env = self._env() | {"KUBECONFIG": str(self.kubeconfig)}
        for kind in ("CACHE", "CONFIG", "DATA"):
            env[f"HELM_{kind}_HOME"] = str(self.workdir / "helm" / kind.lower())
        proc = subprocess.run(self._argv([str(self.bin_dir / "helm"), *args]),
                              capture_output=True, text=True, env=env, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc.stdout

    def create_namespace(self, name: str, timeout: float = 30) -> None:
        """Create a namespace and wait for its `default` ServiceAccount (pods need it)."""
        self.kubectl("create", "namespace", name)
        self.wait_for(f"serviceaccount {name}/default",
                      lambda: self.kubectl("get", "sa", "default", "-n", name, check=False) != "",
                      timeout)

    def token_for(self, namespace: str, serviceaccount: str, duration: str = "1h") -> str:
        """A bound token for an existing ServiceAccount (TokenRequest API)."""
        return self.kubectl(
            "create", "token", serviceaccount, "-n", namespace, f"--duration={duration}"
        ).strip()

    def kubeconfig_for_sa(self, namespace: str, serviceaccount: str) -> Path:
        """A kubeconfig that authenticates as system:serviceaccount:<namespace>:<name>."""
        path = self.workdir / f"kubeconfig-{namespace}-{serviceaccount}"
        token = self.token_for(namespace, serviceaccount)
        path.write_text(_kubeconfig(self.api_url, self.pki / "ca.crt", {"token": token}))
        return path

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        ns = ["-n", namespace] if namespace else []
        result: dict[str, Any] = json.loads(self.kubectl("get", kind, name, *ns, "-o", "json"))
        return result

    def set_pod_phase(
        self, namespace: str, name: str, phase: str, exit_code: int | None = None,
        timeout: float = 30, message: str | None = None,
    ) -> dict[str, Any]:
        """Drive a pod to Succeeded or Failed, as a kubelet would report it.

        kwok moves Pending pods to Running and, with the stages we load, never touches a
        Running pod again unless a Job owns it, so a terminal status written here sticks.
        We wait for Running first, so kwok's Pending->Running write cannot land after ours.
        """
        if phase not in ("Succeeded", "Failed"):
            raise ValueError(f"phase must be Succeeded or Failed, not {phase!r}")
        code = exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1)
        self.wait_for(f"pod {namespace}/{name} Running", lambda: self.get(
            "pod", name, namespace).get("status", {}).get("phase") != "Pending", timeout)
        pod = self.get("pod", name, namespace)
        started = pod["status"].get("startTime") or _now()
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                      "startedAt": started, "finishedAt": _now()}
        if message is not None:  # what the container wrote to its terminationMessagePath
            terminated["message"] = message
        statuses = [
            {"name": c["name"], "image": c["image"], "imageID": "", "ready": False,
             "started": False, "restartCount": 0, "state": {"terminated": terminated}}
            for c in pod["spec"]["containers"]
        ]
        conditions = [
            {"type": t, "status": "False", "reason": "PodCompleted", "lastTransitionTime": _now()}
            for t in ("Ready", "ContainersReady")
        ]
        patch = {"status": {"phase": phase, "containerStatuses": statuses,
                            "conditions": conditions}}
        out = self.kubectl("patch", "pod", name, "-n", namespace, "--subresource=status",
                           "--type=strategic", "-p", json.dumps(patch), "-o", "json")
        result: dict[str, Any] = json.loads(out)
        return result

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 30) -> None:
        """Poll check() until true; fails with the component logs attached."""
        try:
            _poll(what, check, timeout, self.procs)
        except StartError as e:
            raise TimeoutError(f"{e}\n\n{self.log_tails()}") from None

    def log_tails(self, lines: int = 40) -> str:
        return "\n\n".join(
            f"----- {p.name} ({p.log}) -----\n{p.tail(lines)}" for p in self.procs
        )

    # ---- internals (and the hooks a subclass extends: tests/controlplane/node.py) -----------

    def _argv(self, argv: list[str]) -> list[str]:
        """How a component, kubectl or helm is run (node.py: inside its network namespace)."""
        return argv

    def _make_pki(self) -> None:
        _make_pki(self.pki)

    def _apiserver_args(self) -> list[str]:
        """Extra kube-apiserver flags; a later one wins over the same flag above."""
        return []

    def _start_more(self) -> None:
        """Runs last in start(), once the control plane is up."""

    def _http_get(self, url: str, insecure: bool = False) -> bytes:
        """A GET from where the components listen (a probe)."""
        return _http_get(url, insecure)

    def _proc(self, name: str, argv: list[str]) -> Process:
        p = Process(name, self._argv(argv), self.workdir / "logs" / f"{name}.log")
        self.procs.append(p)
        return p

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        # kwok reads ~/.kwok/kwok.yaml and kubectl caches discovery under ~/.kube: keep
        # both inside the workdir so a developer's own config never leaks in.
        env["HOME"] = str(self.workdir)
        env["KUBECACHEDIR"] = str(self.workdir / "kubecache")
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        return env

    def _api_get(self, path: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        try:
            with urllib.request.urlopen(self.api_url + path, context=ctx, timeout=5) as r:
                data: bytes = r.read()
                return data
        except urllib.error.HTTPError:
            return b""

    def _write_kwok_config(self) -> None:
        options = {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokConfiguration",
            "options": {
                "cidr": self.pod_cidr,
                "nodeIP": NODE_IP,
                "manageNodesWithAnnotationSelector": f"{NODE_ANNOTATION}=fake",
                "nodeLeaseDurationSeconds": 40,
                # A config file gets no defaults, and zero parallelism is an error.
                "podPlayStageParallelism": 8,
                "nodePlayStageParallelism": 4,
                "nodeLeaseParallelism": 4,
                "podsOnNodeSyncParallelism": 2,
                "enablePodsOnNodeSyncListPager": True,
                "enablePodsOnNodeSyncStreamWatch": False,
                "enableDebuggingHandlers": False,
            },
        }
        (self.workdir / "kwok.yaml").write_text(
            json.dumps(options) + "\n" + KWOK_STAGES.read_text()
        )

    def _create_nodes(self) -> None:
        nodes = [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": n,
                    "annotations": {NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {"kubernetes.io/hostname": n, "kubernetes.io/os": "linux",
                               "kubernetes.io/arch": "amd64", "type": "kwok"},
                },
                "status": {"capacity": NODE_CAPACITY, "allocatable": NODE_CAPACITY},
            }
            for n in self.node_names
        ]
        self.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                            "items": nodes}))

    def _nodes_ready(self) -> bool:
        items = json.loads(self.kubectl("get", "nodes", "-o", "json"))["items"]
        ready = [
            n for n in items
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in n.get("status", {}).get("conditions", []))
            and not any(t["key"].startswith("node.kubernetes.io/")
                        for t in n.get("spec", {}).get("taints", []))
        ]
        return len(ready) >= self.nodes


def _http_get(url: str, insecure: bool = False) -> bytes:
    ctx = ssl._create_unverified_context() if insecure else None
    with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
        data: bytes = r.read()
        return data


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextlib.contextmanager
def running(nodes: int = 2, workdir: Path | None = None) -> Iterator[Cluster]:
    """Build (cached) and run a cluster for the duration of the block."""
    bin_dir = build()
    tmp = None if workdir else Path(tempfile.mkdtemp(prefix="llmtrain-controlplane-"))
    try:
        with Cluster(bin_dir, workdir or tmp or Path(), nodes=nodes) as c:
            yield c
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the llmtrain test control plane until Ctrl-C.")
    ap.add_argument("--nodes", type=int, default=2, help="kwok fake GPU nodes (default 2)")
    ap.add_argument("--workdir", type=Path,
                    help="put kubeconfig, PKI and logs here and keep them (default: a temp dir)")
    args = ap.parse_args(argv)
    # SIGTERM -> the same clean shutdown as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    print("building (cached after the first run) ...", file=sys.stderr, flush=True)
    try:
        with running(args.nodes, args.workdir) as c:
            print(f"control plane up: {c.api_url}, logs in {c.workdir / 'logs'}", file=sys.stderr)
            print(f"export KUBECONFIG={c.kubeconfig} PATH={c.bin_dir}:$PATH", file=sys.stderr)
            print(c.kubeconfig, flush=True)
            while all(p.alive() for p in c.procs):
                time.sleep(1)
            dead = [p.name for p in c.procs if not p.alive()]
            print(f"{', '.join(dead)} exited:\n{c.log_tails()}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 0
    except (GoMissing, StartError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        if isinstance(e, subprocess.CalledProcessError):
            print(e.stderr, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
