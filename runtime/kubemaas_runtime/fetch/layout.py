"""Where things live under the destination directory.

``DIR/<files>``                     only complete, verified files ever carry their final name
``DIR/.kubemaas-manifest.json``     written last: the directory is complete (files, sizes, sha256,
                                    source, revision)
``DIR/.kubemaas-fetch/partial/``    ``<path>.part``: bytes received so far, resumed by size
``DIR/.kubemaas-fetch/done.jsonl``  one line per verified file, so a restarted fetch skips it
``DIR/.kubemaas-fetch/validators/`` ``<path>``: the ETag the partial file's bytes came with
``DIR/.kubemaas-fetch/source.json`` whose bytes the two above are: source URI, resolved revision
``DIR/.kubemaas-fetch.lock``        held by the fetch writing into DIR (lock.py)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

MANIFEST = ".kubemaas-manifest.json"
WORK = ".kubemaas-fetch"


def partial_path(dest: Path, rel: str) -> Path:
    return dest / WORK / "partial" / (rel + ".part")


def validator_path(dest: Path, rel: str) -> Path:
    """The ETag (or Last-Modified) of the answer the partial file's bytes came from."""
    return dest / WORK / "validators" / rel


def journal_path(dest: Path) -> Path:
    return dest / WORK / "done.jsonl"


def identity_path(dest: Path) -> Path:
    return dest / WORK / "source.json"


def adopt_work(dest: Path, source: str, revision: str | None) -> bool:
    """Keep the journal and partial files only when they hold this source's bytes at this
    resolved revision; else (another URI, a branch that moved, or no record of either) discard
    them, so a model is never mixed from two sources. True when something was discarded."""
    identity = {"source": source, "revision": revision}
    work = dest / WORK
    discarded = False
    if work.exists():
        try:
            earlier = json.loads(identity_path(dest).read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier != identity:
            shutil.rmtree(work)
            discarded = True
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(identity_path(dest), identity)
    return discarded


def read_journal(dest: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    try:
        lines = journal_path(dest).read_text().splitlines()
    except FileNotFoundError:
        return done
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(item, dict) and isinstance(item.get("path"), str):
            done[item["path"]] = item
    return done


def append_journal(dest: Path, record: dict[str, Any]) -> None:
    path = journal_path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_manifest(dest: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((dest / MANIFEST).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
