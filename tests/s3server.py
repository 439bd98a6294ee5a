"""A real S3 server for tests: SeaweedFS's `weed server -s3` on 127.0.0.1, with one identity.

    bin_dir = build()                                  # tests/s3/build.sh; instant when cached
    with S3Server(bin_dir, tmp_path) as s3:            # the `s3` fixture in tests/conftest.py
        s3.endpoint, s3.access_key, s3.secret_key      # wrong keys are really refused
        s3.env()                                       # AWS_* for the trainer's processes
        s3.make_bucket("b")

Every listener (master, volume, filer, S3, and their gRPC ports, which default to port+10000)
gets a free port picked here; telemetry, WebDAV, Iceberg and Lance are off, so nothing leaves
loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent / "s3"
ACCESS_KEY, SECRET_KEY = "llmtrain-test", "llmtrain-test-secret-key"


class GoMissing(RuntimeError):
    pass


def build(timeout: float | None = None) -> Path:
    """Run tests/s3/build.sh; return the bin dir holding `weed`."""
    proc = subprocess.run([str(HERE / "build.sh")], capture_output=True, text=True, timeout=timeout)
    if proc.returncode == 127:
        raise GoMissing("go not found on PATH")
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(
            proc.returncode, "tests/s3/build.sh", proc.stdout, proc.stderr
        )
    return Path(proc.stdout.strip().splitlines()[-1])


def _free_ports(n: int) -> list[int]:
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


class S3Server:
    def __init__(self, bin_dir: Path, workdir: Path) -> None:
        self.weed, self.dir = bin_dir / "weed", workdir
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **override: str) -> dict[str, str]:
        """The variables the trainer reads its credentials from."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            **override,
        }

    def start(self, timeout: float = 120) -> S3Server:
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.dir / "s3.json"
        identity = {
            "name": "llmtrain",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        p = _free_ports(8)
        self.port = p[6]
        args = [
            str(self.weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
            f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64", f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}",
            "-volume.max=200", "-filer", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
            f"-filer.localSocket={self.dir}/filer.sock", "-s3", f"-s3.port={p[6]}",
            f"-s3.port.grpc={p[7]}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={config}", f"-s3.localSocket={self.dir}/s3.sock",
        ]  # fmt: skip
        self.log = (self.dir / "weed.log").open("ab")
        self.proc = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.dir
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited {self.proc.returncode}: {self._tail()}")
            if self._ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"weed's S3 API did not come up in {timeout}s: {self._tail()}")

    def _ready(self) -> bool:
        """Ready when a signed request can create and use a bucket (the filer and a volume
        are up, not only the S3 listener)."""
        try:
            self.make_bucket("llmtrain-ready")
            fs = self.filesystem()
            with fs.open_output_stream("llmtrain-ready/probe") as f:
                f.write(b"ok")
            return True
        except OSError:
            return False

    def _tail(self) -> str:
        text = (self.dir / "weed.log").read_text(errors="replace")
        return text[-3000:]

    def filesystem(self, **kwargs: Any) -> Any:
        from pyarrow import fs

        return fs.S3FileSystem(
            connect_timeout=2,
            retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=1),
            access_key=kwargs.pop("access_key", self.access_key),
            secret_key=kwargs.pop("secret_key", self.secret_key),
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            region="us-east-1",
            **kwargs,
        )

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` (fine when it exists); return its s3:// URI."""
        fs = self.filesystem(allow_bucket_creation=True)
        fs.create_dir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None) is not None:
            self.log.close()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
