"""Report, as one JSON object on a stdout line starting with EVALKIT-CHECKPOINTS, the checkpoint
files a sweep names: a checkpoints directory (or an experiment directory holding checkpoints/),
a glob, or one file; and the size, mtime and inode of a few other files (a dataset split's,
whose change makes a sweep's kept numbers stale).

Usage (on the server; standard library only, sent inline):
  python -c SOURCE FILES_JSON PATTERN [PATTERN ...]

FILES_JSON: a JSON list of the other files to describe (null for a missing one).

For each file: its size, mtime, inode and whether its zip directory (torch.save's format) is
readable. Files that may hold the same bytes as another (same size, same first, middle and last
MiB) also get their SHA-256, so that the laptop can tell an alias from a new epoch without
hashing every checkpoint in full.
"""
import hashlib
import json
import os
import re
import sys
import time
import zipfile

MARKER = "EVALKIT-CHECKPOINTS "
SUFFIXES = (".pt", ".pth")
SAMPLE = 1 << 20
GLOB_MAGIC = re.compile(r"[*?[]")


def matching(pattern):
    """(what kind of thing PATTERN named, the folder searched, the files found)."""
    import glob
    if GLOB_MAGIC.search(pattern):
        return "glob", pattern, sorted(path for path in glob.glob(pattern) if os.path.isfile(path))
    if os.path.isfile(pattern):
        return "file", pattern, [pattern]
    if not os.path.isdir(pattern):
        return "missing", pattern, []
    folder = pattern
    found = in_folder(folder)
    if not found and os.path.isdir(os.path.join(folder, "checkpoints")):
        folder = os.path.join(folder, "checkpoints")  # the experiment directory was named
        found = in_folder(folder)
    return "directory", folder, found


def in_folder(folder):
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(os.path.join(folder, name) for name in names
                  if name.endswith(SUFFIXES) and not name.startswith(".")
                  and os.path.isfile(os.path.join(folder, name)))


def describe(path):
    return dict(stat_of(path), path=path, zip=is_zip(path), sha256=None)


def stat_of(path):
    info = os.stat(path)
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": f"{info.st_dev}:{info.st_ino}"}


def stat_if_there(path):
    try:
        return stat_of(path)
    except OSError:
        return None


def is_zip(path):
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
        return True
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def sample_digest(path, size):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for offset in sorted({0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)}):
            handle.seek(offset)
            digest.update(handle.read(SAMPLE))
    return digest.hexdigest()


def full_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def add_digests(files):
    """SHA-256 only where a cheaper look cannot tell two files apart."""
    by_sample = {}
    for entry in files:
        same_size = [other for other in files if other["size"] == entry["size"]]
        if len(same_size) > 1:
            by_sample.setdefault(sample_digest(entry["path"], entry["size"]), []).append(entry)
    for group in by_sample.values():
        if len(group) > 1:
            for entry in group:
                entry["sha256"] = full_digest(entry["path"])


def listing(pattern):
    kind, searched, paths = matching(pattern)
    files = []
    for path in paths:
        try:
            files.append(describe(path))
        except OSError:
            continue  # removed while we looked (training rotating its files)
    add_digests(files)
    return {"pattern": pattern, "kind": kind, "searched": searched, "files": files}


def main(argv):
    others = {path: stat_if_there(path) for path in json.loads(argv[0])}
    sets = [listing(pattern) for pattern in argv[1:]]
    # the server's clock: whether a file has been left alone long enough is judged by it
    answer = {"sets": sets, "files": others, "now_ns": time.time_ns()}
    sys.stdout.write(MARKER + json.dumps(answer, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
