"""Load an image from buildah's overlay store into containerd's overlayfs snapshotter by
hard-linking its layers, instead of streaming GBs of tar through `ctr images import`.

    python3 tests/images/link_import.py --buildah-root DIR --buildah-runroot DIR \\
        --address SOCK IMAGE_REF [TARGET_REF]

Both stores keep a layer as a plain directory in overlayfs' own format (whiteouts as 0/0
character devices, opaque directories as trusted.overlay.* xattrs), so for each layer that
containerd lacks (by chain ID) this prepares a snapshot on its parent, `cp -al`s buildah's
diff directory into the snapshot's upper directory and commits it under the chain ID. Then it
imports an OCI archive holding only the manifest and config: the unpack step finds every
snapshot present, as after a pull with the CRI's discard_unpacked_layers. Committed layers are
immutable in both stores, and deleting one side only drops a link, so sharing inodes is safe;
the two stores then take the disk of one.

Exits non-zero on anything unexpected (a buildah store layout it does not know, say); the
caller (tests/images/build.sh) then streams the image the ordinary way. containerd's GC must
be off while it runs (build.sh's private containerd has it off): a committed snapshot is
referenced by no image until the import at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path


def run(*argv: str, input: bytes | None = None) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}...: {proc.stderr.decode().strip()}")
    return proc.stdout.decode()


def chain_ids(diff_ids: list[str]) -> list[str]:
    out: list[str] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--buildah-root", type=Path, required=True)
    ap.add_argument("--buildah-runroot", required=True)
    ap.add_argument("--address", required=True)
    ap.add_argument("image")
    ap.add_argument("target", nargs="?")
    args = ap.parse_args()
    target = args.target or args.image
    buildah = [
        "buildah",
        "--root",
        str(args.buildah_root),
        "--runroot",
        args.buildah_runroot,
        "--storage-driver",
        "overlay",
    ]
    ctr = ["ctr", "--address", args.address, "--namespace", "k8s.io"]

    info = json.loads(run(*buildah, "inspect", "--type", "image", args.image))
    manifest_raw, config_raw = info["Manifest"].encode(), info["Config"].encode()
    manifest = json.loads(manifest_raw)
    diff_ids = json.loads(config_raw)["rootfs"]["diff_ids"]
    if [layer["digest"] for layer in manifest["layers"]] != diff_ids:
        raise SystemExit("manifest layers are not the uncompressed diffs")
    layers = json.loads((args.buildah_root / "overlay-layers" / "layers.json").read_text())
    by_diff = {layer["diff-digest"]: layer["id"] for layer in layers if "diff-digest" in layer}

    linked: list[str] = []
    t0 = time.monotonic()
    try:
        link_and_import(
            args, ctr, manifest, manifest_raw, config_raw, diff_ids, by_diff, target, linked
        )
    finally:
        # ctr marks what it prepares and commits as a GC root; once an image references the
        # snapshots (or the caller's fallback import will), they must be collectable again.
        for chain in linked:
            subprocess.run(
                [*ctr, "snapshots", "label", chain, "containerd.io/gc.root="], capture_output=True
            )
    print(
        f"{len(linked)}/{len(diff_ids)} layers linked in {time.monotonic() - t0:.1f}s",
        file=sys.stderr,
    )
    return 0


def link_and_import(
    args: argparse.Namespace,
    ctr: list[str],
    manifest: dict,
    manifest_raw: bytes,
    config_raw: bytes,
    diff_ids: list[str],
    by_diff: dict[str, str],
    target: str,
    linked: list[str],
) -> None:
    chains = chain_ids(diff_ids)
    for i, (diff, chain) in enumerate(zip(diff_ids, chains, strict=True)):
        if subprocess.run([*ctr, "snapshots", "info", chain], capture_output=True).returncode == 0:
            continue
        src = args.buildah_root / "overlay" / by_diff[diff] / "diff"
        if not src.is_dir():
            raise SystemExit(f"no diff dir {src}")
        key = f"llmtrain-link-{chain[7:19]}-{time.time_ns()}"
        parent = [chains[i - 1]] if i else []
        mounts = json.loads(run(*ctr, "snapshots", "prepare", "--mounts", key, *parent))
        try:
            m = {k.lower(): v for k, v in mounts[0].items()}  # Go's field names
            if m["type"] == "bind":
                upper = m["source"]
            else:
                upper = next(o.split("=", 1)[1] for o in m["options"] if o.startswith("upperdir="))
            run("cp", "-a", "--link", f"{src}/.", f"{upper}/")
            run(*ctr, "snapshots", "commit", chain, key)
        except BaseException:
            subprocess.run([*ctr, "snapshots", "rm", key], capture_output=True)
            raise
        linked.append(chain)

    # An OCI archive with just the manifest and the config; the layers are snapshots now.
    digest = "sha256:" + hashlib.sha256(manifest_raw).hexdigest()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": manifest["mediaType"],
                "digest": digest,
                "size": len(manifest_raw),
                "annotations": {"org.opencontainers.image.ref.name": target},
            }
        ],
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", json.dumps(index).encode()),
            (f"blobs/sha256/{digest[7:]}", manifest_raw),
            (f"blobs/sha256/{manifest['config']['digest'][7:]}", config_raw),
        ]:
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
    run(*ctr, "images", "import", "-", input=buf.getvalue())
    if target not in run(*ctr, "images", "ls", "-q").split():
        raise SystemExit(f"{target} not in containerd after the import")


if __name__ == "__main__":
    sys.exit(main())
