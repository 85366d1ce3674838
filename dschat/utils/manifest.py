"""What a checkpoint holds, written last: every file's name, size and sha256, checked before anything loads.

A checkpoint is trusted only when its manifest lists exactly the files present, each with its recorded size
and digest. That catches a truncated or missing shard, a torn JSON file, a file replaced or dropped in by
someone else — which matters because DeepSpeed's model and optimizer files are pickles, and unpickling runs
code: dschat unpickles only files whose digests it recorded itself. Stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

from dschat.utils import atomic

MANIFEST = "dschat_manifest.json"
MANIFEST_FORMAT = 1
CHUNK = 8 << 20
HASH_THREADS = 4  # hashlib releases the GIL: several shards hash at once on a many-core node


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: str) -> list[str]:
    """Every file under ``directory`` (relative, sorted), the manifest itself excluded."""
    found = []
    for parent, _, names in os.walk(directory):
        for name in names:
            relative = os.path.relpath(os.path.join(parent, name), directory)
            if relative != MANIFEST:
                found.append(relative)
    return sorted(found)


def _digests(directory: str, names: list[str]) -> list[str]:
    with ThreadPoolExecutor(max_workers=max(1, min(HASH_THREADS, len(names)))) as pool:
        return list(pool.map(lambda name: sha256_file(os.path.join(directory, name)), names))


def write_manifest(directory: str) -> None:
    """Record every file now in ``directory``; call it when nothing more will be written there."""
    names = _files(directory)
    digests = _digests(directory, names)
    entries = {
        name: {"size": os.path.getsize(os.path.join(directory, name)), "sha256": digest}
        for name, digest in zip(names, digests, strict=True)
    }
    atomic.write_json(
        os.path.join(directory, MANIFEST), {"format": MANIFEST_FORMAT, "files": entries}, indent=1
    )


def _read(directory: str) -> tuple[dict | None, str | None]:
    """The manifest's file table, or why there is none usable."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return None, f"no {MANIFEST} (not a complete checkpoint written by this dschat)"
    try:
        with open(path, "rb") as handle:
            content = json.loads(handle.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        return None, f"{MANIFEST} is unreadable ({type(err).__name__})"
    if not isinstance(content, dict) or content.get("format") != MANIFEST_FORMAT:
        return None, f"{MANIFEST} has an unknown format"
    files = content.get("files")
    well_formed = isinstance(files, dict) and all(
        isinstance(entry, dict)
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("sha256"), str)
        for entry in files.values()
    )
    if not well_formed:
        return None, f"{MANIFEST} is malformed"
    return files, None


def verify(directory: str) -> str | None:
    """Why the checkpoint in ``directory`` cannot be trusted, or None when every file is as recorded.

    Sizes are compared first (cheap: a truncated file never gets hashed), then digests.
    """
    files, problem = _read(directory)
    if problem:
        return problem
    present = set(_files(directory))
    if missing := sorted(set(files) - present):
        return f"{missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    if foreign := sorted(present - set(files)):
        return f"{foreign[0]} was not written by dschat (it is not in {MANIFEST}); remove it"
    for name, entry in files.items():
        size = os.path.getsize(os.path.join(directory, name))
        if size != entry["size"]:
            return f"{name} has {size} bytes, {entry['size']} were written (truncated or replaced)"
    names = sorted(files)
    for name, digest in zip(names, _digests(directory, names), strict=True):
        if digest != files[name]["sha256"]:
            return f"{name} does not match its recorded sha256 (damaged or replaced)"
    return None
