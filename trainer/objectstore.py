"""An S3 API bucket as the stage directory's durable copy, on pyarrow.fs.

    store = objectstore.connect(cfg.object_store)       # contract.ObjectStoreConfig
    store.check()                                       # wrong credentials: StoreError, now
    store.upload_dir(local_ckpt, f"{uri}/checkpoints/checkpoint-40")   # COMPLETE goes last
    store.complete(f"{uri}/checkpoints")                # [(step, uri)] oldest first
    store.download(f"{uri}/final", "/storage/job/sft/final")          # atomic locally
    store.prune(f"{uri}/checkpoints", keep=2); store.delete(uri)

pyarrow's S3FileSystem (the AWS C++ SDK, as Ray Train's own storage uses): no extra
dependency, multipart uploads, retries, and `endpoint_override`/`force_virtual_addressing`
for stores other than AWS. Credentials: the standard AWS variables when set
(contract.ENV_AWS_*), else the SDK's default chain (profile files, a pod's web identity).

An object is visible only once fully uploaded, but a directory is many objects: a checkpoint
counts only when its `COMPLETE` object exists, and that object is uploaded last, so a killed
upload leaves a prefix without it, which `complete` ignores and the next save replaces.
"""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmtrain.trainer.contract import (
    COMPLETE,
    ENV_AWS_ACCESS_KEY_ID,
    ENV_AWS_SECRET_ACCESS_KEY,
    ENV_AWS_SESSION_TOKEN,
    ObjectStoreConfig,
    checkpoint_step,
)

log = logging.getLogger(__name__)

# Error codes (the AWS SDK's names, as pyarrow words them) that a retry cannot fix.
_DENIED = (
    "ACCESS_DENIED",
    "INVALID_ACCESS_KEY_ID",
    "SIGNATURE_DOES_NOT_MATCH",
    "NO_SUCH_BUCKET",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "NoSuchBucket",
    "HTTP response code: 403",
    "HTTP status 403",
)
_CHUNK = 8 << 20


class StoreError(ValueError):
    """A permanent object-store problem (wrong credentials, no such bucket), naming the
    bucket. A ValueError: the trainer's permanent class (contract.ExitCode.PERMANENT)."""


def split(uri: str) -> tuple[str, str]:
    """s3://bucket/a/b -> ("bucket", "a/b")."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{uri}: not an s3://bucket/prefix URI")
    return parts.netloc, parts.path.strip("/")


def _path(uri: str) -> str:
    bucket, key = split(uri)
    return f"{bucket}/{key}" if key else bucket


def filesystem(config: ObjectStoreConfig) -> Any:
    """The pyarrow S3FileSystem for `config`, credentials from the environment."""
    from pyarrow import fs

    kwargs: dict[str, object] = {
        "force_virtual_addressing": not config.path_style,
        "connect_timeout": 10,
        "request_timeout": 60,
        "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    if config.endpoint:
        parts = urlsplit(config.endpoint)
        kwargs.update(endpoint_override=parts.netloc, scheme=parts.scheme)
    region = config.region or ("us-east-1" if config.endpoint else None)
    if region:
        kwargs["region"] = region
    key, secret = os.environ.get(ENV_AWS_ACCESS_KEY_ID), os.environ.get(ENV_AWS_SECRET_ACCESS_KEY)
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret)
        if os.environ.get(ENV_AWS_SESSION_TOKEN):
            kwargs["session_token"] = os.environ[ENV_AWS_SESSION_TOKEN]
    return fs.S3FileSystem(**kwargs)


def connect(config: ObjectStoreConfig) -> Store:
    return Store(config)


class Store:
    """One bucket (config.uri's); every method takes full s3:// URIs inside it."""

    def __init__(self, config: ObjectStoreConfig) -> None:
        from pyarrow import fs

        self.config = config
        self.bucket, _ = split(config.uri)
        self.fs: fs.S3FileSystem = filesystem(config)

    @property
    def _where(self) -> str:
        return f" at {self.config.endpoint}" if self.config.endpoint else ""

    def _fail(self, error: OSError, what: str) -> Exception:
        """A permanent StoreError for what a retry cannot fix, else the OSError (retryable)."""
        text = str(error)
        if any(code in text for code in _DENIED):
            return StoreError(
                f"object store bucket {self.bucket!r}{self._where}: {what} refused; check "
                f"storage.objectStore (the bucket, and the credentials in "
                f"{ENV_AWS_ACCESS_KEY_ID}/{ENV_AWS_SECRET_ACCESS_KEY}): {text.strip()}"
            )
        return error

    def check(self) -> None:
        """Fail fast, naming the bucket, when it is missing or access is refused."""
        from pyarrow import fs

        self.ls(self.config.uri)
        if self.fs.get_file_info(self.bucket).type == fs.FileType.NotFound:
            raise StoreError(f"object store bucket {self.bucket!r}{self._where}: no such bucket")

    def ls(self, uri: str) -> list[str]:
        """Names directly under `uri` ([] when nothing is there)."""
        from pyarrow import fs

        selector = fs.FileSelector(_path(uri), allow_not_found=True, recursive=False)
        try:
            return [Path(i.path).name for i in self.fs.get_file_info(selector)]
        except OSError as e:
            raise self._fail(e, f"listing {uri}") from e

    def exists(self, uri: str) -> bool:
        from pyarrow import fs

        try:
            return bool(self.fs.get_file_info(_path(uri)).type != fs.FileType.NotFound)
        except OSError as e:
            raise self._fail(e, f"reading {uri}") from e

    def upload_file(self, local: str | Path, uri: str) -> None:
        try:
            with open(local, "rb") as src, self.fs.open_output_stream(_path(uri)) as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
        except OSError as e:
            raise self._fail(e, f"writing {uri}") from e

    def upload_dir(self, local: str | Path, uri: str, last: str | None = COMPLETE) -> int:
        """Upload the tree `local` to `uri`, the file named `last` (the marker) after all
        the others are stored; return the bytes sent. What was at `uri` goes first (a killed
        upload's leftovers must not mix with this one)."""
        local = Path(local)
        self.delete(uri)
        files = sorted(p for p in local.rglob("*") if p.is_file())
        marker = local / last if last else None
        rest = [p for p in files if p != marker]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda p: self.upload_file(p, f"{uri}/{p.relative_to(local)}"), rest))
        if marker is not None and marker.is_file():
            self.upload_file(marker, f"{uri}/{last}")
        return sum(p.stat().st_size for p in files)

    def download(self, uri: str, local: str | Path) -> bool:
        """Copy the object or tree at `uri` to `local`, replacing it; False when there is
        nothing at `uri`. Written beside `local` first, then renamed: never half there."""
        from pyarrow import fs

        local = Path(local)
        try:
            info = self.fs.get_file_info(_path(uri))
        except OSError as e:
            raise self._fail(e, f"reading {uri}") from e
        if info.type == fs.FileType.NotFound:
            return False
        tmp = local.with_name(f".{local.name}.download")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.unlink(missing_ok=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            if info.type == fs.FileType.File:
                fs.copy_files(_path(uri), str(tmp), self.fs, fs.LocalFileSystem())
            else:
                tmp.mkdir()
                fs.copy_files(
                    _path(uri), str(tmp), self.fs, fs.LocalFileSystem(), chunk_size=_CHUNK
                )
        except OSError as e:
            raise self._fail(e, f"reading {uri}") from e
        if local.is_dir():
            shutil.rmtree(local)
        os.replace(tmp, local)
        return True

    def complete(self, uri: str) -> list[tuple[int, str]]:
        """(step, uri) of every checkpoint under `uri` with its COMPLETE marker, oldest first."""
        found = []
        for name in self.ls(uri):
            step = checkpoint_step(name)
            if step is not None and self.exists(f"{uri}/{name}/{COMPLETE}"):
                found.append((step, f"{uri}/{name}"))
        return sorted(found)

    def delete(self, uri: str) -> None:
        """Delete everything under `uri` (nothing there is fine)."""
        try:
            if self.exists(uri):
                self.fs.delete_dir(_path(uri))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._fail(e, f"deleting {uri}") from e

    def prune(self, uri: str, keep: int) -> None:
        """Keep the newest `keep` complete checkpoints under `uri`; delete older ones and any
        incomplete one older than the newest complete (a killed upload's leftovers)."""
        done = self.complete(uri)
        keep_uris = {u for _, u in done[-keep:]}
        newest = done[-1][0] if done else -1
        for name in self.ls(uri):
            step = checkpoint_step(name)
            if step is None or f"{uri}/{name}" in keep_uris:
                continue
            if step < newest:
                self.delete(f"{uri}/{name}")
