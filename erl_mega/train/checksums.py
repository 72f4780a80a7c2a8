"""A checkpoint's per-file checksums: written into it before it is published, verified before it is loaded.

`checksums.json` lists every file of the checkpoint directory with its size and SHA-256. A
truncated, deleted or altered file (a flipped byte in a `.distcp` shard loads silently wrong
weights otherwise) is found before any of it is read into the trainer. Both directions are
collective: the ranks hash disjoint stripes of the file list and exchange their digests.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch.distributed as dist

from erl_mega.train.dist import all_gather, broadcast_from_leader, is_leader

MANIFEST = "checksums.json"


def digests(directory: Path) -> dict[str, list]:
    """Size and SHA-256 of every file under `directory`, by relative name (collective: ranks hash stripes)."""
    files = broadcast_from_leader(_files(directory) if is_leader() else None)
    found: dict[str, list] = {}
    for part in all_gather({name: [(directory / name).stat().st_size, _sha256(directory / name)]
                            for name in _stripe(files)}):
        found |= part
    return dict(sorted(found.items()))


def write_manifest(directory: Path, files: dict[str, list]) -> None:
    """`checksums.json` into `directory`, atomically (the leader's part of publishing a checkpoint)."""
    tmp = directory / f".{MANIFEST}.tmp"
    with tmp.open("w") as f:
        json.dump({"files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)


def damage(directory: Path) -> str | None:
    """What is wrong with the checkpoint `directory` (one phrase naming the file), or None if intact (collective)."""
    manifest = broadcast_from_leader(_read_manifest(directory) if is_leader() else None)
    if isinstance(manifest, str):
        return manifest
    found = []
    for name in _stripe(sorted(manifest)):
        size, digest = manifest[name]
        path = directory / name
        if not path.is_file():
            found.append(f"{name} is missing")
        elif path.stat().st_size != size:
            found.append(f"{name} has {path.stat().st_size} bytes, {size} were written (truncated or overwritten)")
        elif _sha256(path) != digest:
            found.append(f"{name} differs from its checksum (altered on disk)")
    problems = sorted(p for part in all_gather(found) for p in part)
    return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "") if problems else None


def _read_manifest(directory: Path) -> dict | str:
    path = directory / MANIFEST
    if not directory.is_dir():
        return "the directory is missing"
    try:
        files = json.loads(path.read_text())["files"]
        return {str(name): (int(size), str(digest)) for name, (size, digest) in files.items()}
    except FileNotFoundError:
        return f"{MANIFEST} is missing (not a complete checkpoint)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST} is unreadable"


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def _stripe(files: list[str]) -> list[str]:
    """This rank's share of the files to hash."""
    if not dist.is_initialized():
        return files
    return files[dist.get_rank()::dist.get_world_size()]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
