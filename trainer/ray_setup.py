"""Ray set-up that is not training: a worker-process hook, and the local run's one Ray head.

    ray.init(runtime_env={"worker_process_setup_hook": "llmtrain.trainer.ray_setup.quiet"})

    with ray_setup.local_head(log_file):      # `llmtrain run`: one Ray for every stage
        subprocess.run(["llmtrain", "worker", "--stage-config", "stage.json"])  # joins it
    # or LocalHead(log_file): launch() now, wait() when the first stage needs it

Kept free of heavy imports: Ray runs `quiet` at the start of each actor and task process, and
the local runner (which never imports torch or ray) calls `local_head`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Set (to "1") by the local runner next to RAY_ADDRESS: the address is this machine's own
# Ray, started for `llmtrain run`, not a gang spanning pods (engine.py shares CPUs out then).
ENV_LOCAL_HEAD = "LLMTRAIN_LOCAL_RAY"
# Ray keeps a one-machine Ray on 127.0.0.1 only when this is "0" (ray_constants).
ENV_LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
READY = "Ray runtime started"

# Ray Train internals that warn on every poll about features a stage does not use: the
# placement-group cleaner needs the State API (the dashboard, which we do not start), and
# the autoscaling coordinator only matters under the Ray autoscaler (our gangs are fixed).
NOISY = (
    "ray.train.v2._internal.execution.controller.placement_group_cleaner",
    "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client",
)


def quiet() -> None:
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalHead:
    """A loopback-only Ray head (`ray start --head --block`) for this machine's stages.

        head = LocalHead(log_file); head.launch()   # returns at once: Ray starts meanwhile
        ...                                          # e.g. the initializer runs
        head.wait()    # ready; RAY_ADDRESS (+ ENV_LOCAL_HEAD=1) exported for child processes
        head.stop()    # also on Ctrl-C or a failed stage

    Every stage joins it instead of starting its own Ray (about 10-20 s each on 2 cores, plus
    the Ray Train helper actors that then live once per run). `--block` shuts the head's
    processes down on SIGTERM, and Ray's reaper does if this process dies first. A second
    attempt when the first one fails: on a busy machine the raylet gives up on its agents
    after 15 s.
    """

    def __init__(self, log_file: Path, attempts: int = 2) -> None:
        self.log_file, self.attempts = log_file, attempts
        # The run's own token: Ray's default (~/.ray/auth_token) is shared by every Ray of
        # this user, and a client joining by address sends it only when told the mode.
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.temp_dir = ""
        self.saved: dict[str, str | None] | None = None

    def launch(self) -> None:
        # Its own temp dir: `ray start` writes its address to {temp dir}/ray_current_cluster,
        # and every plain `ray.init()` on the machine joins the address in /tmp/ray's.
        self.temp_dir = tempfile.mkdtemp(prefix="llmtrain-ray-")
        self.port = _free_port()
        self.proc = _start(self.port, self.log_file, self.auth, self.temp_dir)

    def wait(self) -> str:
        """Block until the head is ready (launching it if need be); again: its address."""
        if self.saved is not None:
            return os.environ["RAY_ADDRESS"]
        if self.proc is None:
            self.launch()
        assert self.proc is not None
        for attempt in range(self.attempts):
            if attempt:
                self.port = _free_port()
                self.proc = _start(self.port, self.log_file, self.auth, self.temp_dir)
            if _ready(self.proc, self.log_file):
                break
            _stop(self.proc)
            if attempt == self.attempts - 1:
                self.proc = None
                shutil.rmtree(self.temp_dir, ignore_errors=True)
                tail = self.log_file.read_text(errors="replace").splitlines()[-10:]
                raise RuntimeError(f"could not start Ray ({self.log_file}):\n" + "\n".join(tail))
        address = f"127.0.0.1:{self.port}"
        exported = {"RAY_ADDRESS": address, ENV_LOCAL_HEAD: "1", ENV_LOOPBACK: "0", **self.auth}
        self.saved = {k: os.environ.get(k) for k in exported}
        os.environ.update(exported)
        return address

    def stop(self) -> None:
        for k, v in (self.saved or {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.saved = None
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def local_head(log_file: Path, attempts: int = 2) -> Iterator[str]:
    """LocalHead as a context manager: yields the ready head's address."""
    head = LocalHead(log_file, attempts)
    try:
        yield head.wait()
    finally:
        head.stop()


def _start(
    port: int, log_file: Path, auth: dict[str, str], temp_dir: str
) -> subprocess.Popen[bytes]:
    ray = Path(sys.executable).parent / "ray"
    base = [str(ray)] if ray.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
    # fmt: off
    command = [
        *base, "start", "--head", "--block", "--port", str(port),
        "--node-ip-address", "127.0.0.1", "--num-cpus", str(os.cpu_count() or 1),
        "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir,
    ]  # fmt: on
    # No drain on SIGTERM: Ray would wait up to 30 s for idle worker leases before exiting,
    # and we stop the head only once no stage is running.
    env = {**os.environ, ENV_LOOPBACK: "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **auth}
    env.pop("RAY_ADDRESS", None)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _ready(proc: subprocess.Popen[bytes], log_file: Path, timeout: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout
    while READY not in log_file.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    # Whatever of the head's session is left (its own group: never anyone else's process).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
