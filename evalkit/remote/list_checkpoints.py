"""Report, as one JSON object on a stdout line starting with EVALKIT-CHECKPOINTS, the checkpoint
files a sweep names: a checkpoints directory (or an experiment directory holding checkpoints/),
a glob, or one file; and the size, mtime and inode of a few other files (a dataset split's,
whose change makes a sweep's kept numbers stale).

Usage (on the server; standard library only, sent inline):
  python -c SOURCE CACHE_FILE FILES_JSON PATTERN [PATTERN ...]

CACHE_FILE: where the facts learned of each file's content are kept between looks ("" for no
cache); written only when its folder exists. FILES_JSON: a JSON list of the other files to
describe (null for a missing one). A PATTERN that names an existing file or folder is that file or
folder, even with [, * or ? in its name; otherwise it is a glob.

For each file: its size, mtime, inode, whether its zip directory (torch.save's format) is
readable, and the epoch and step its training saved in it (read without torch, running nothing
from the file). The proof that two files hold one checkpoint is left to the laptop; this gives it
the evidence only where a cheaper look cannot tell them apart, so that no checkpoint is hashed in
full without need: `sha256` for files of one size whose first, middle and last MiB are equal, and
`state` (a digest of the pickled dict and the tensor records, which torch.save writes the same
whatever the file is called) for files of one epoch and step whose archives list those records
alike (names, sizes and CRC-32s: read from the zip directory, not from the records). A hard link
needs neither. Files that cannot be looked at are listed under `skipped` with why.
"""
import collections
import hashlib
import io
import json
import os
import pickle
import re
import sys
import time
import zipfile
import zlib

MARKER = "EVALKIT-CHECKPOINTS "
SUFFIXES = (".pt", ".pth")
SAMPLE = 1 << 20
BLOCK = 1 << 22
GLOB_MAGIC = re.compile(r"[*?[]")
CACHE_LIMIT = 2000
# what a damaged or foreign archive raises (a file we cannot read at all raises OSError)
NOT_A_ZIP = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError,
             NotImplementedError, RuntimeError)
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def matching(pattern):
    """(what kind of thing PATTERN named, the folder searched, the files found)."""
    import glob
    if os.path.isfile(pattern):
        return "file", pattern, [pattern]
    if os.path.isdir(pattern):
        return ("directory",) + in_directory(pattern)
    if GLOB_MAGIC.search(pattern):
        return "glob", pattern, sorted(path for path in glob.glob(pattern) if os.path.isfile(path))
    return "missing", pattern, []


def in_directory(folder):
    found = in_folder(folder)
    if not found and os.path.isdir(os.path.join(folder, "checkpoints")):
        folder = os.path.join(folder, "checkpoints")  # the experiment directory was named
        found = in_folder(folder)
    return folder, found


def in_folder(folder):
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(os.path.join(folder, name) for name in names
                  if name.endswith(SUFFIXES) and not name.startswith(".")
                  and os.path.isfile(os.path.join(folder, name)))


def stat_of(path):
    info = os.stat(path)
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": f"{info.st_dev}:{info.st_ino}"}


def stat_if_there(path):
    try:
        return stat_of(path)
    except OSError:
        return None


def describe(entry, facts):
    """Fill ENTRY (its path only) with what its stat and zip directory say."""
    info = os.stat(entry["path"])
    entry.update(size=info.st_size, mtime_ns=info.st_mtime_ns, inode=f"{info.st_dev}:{info.st_ino}",
                 zip=is_zip(entry["path"]), epoch=None, step=None, sha256=None, state=None, cached=False)
    # ctime too: cp -p or rsync --inplace rewrite a file keeping its inode, size and mtime,
    # and only the ctime (which no tool can set) tells the cache that the content is new
    entry["_key"] = f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"
    if entry["zip"]:
        entry["epoch"], entry["step"] = facts.get(entry, "epoch_step", read_epoch_step)


def is_zip(path):
    """Whether the zip directory, which torch.save writes last, is readable: the file is whole."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
        return True
    except NOT_A_ZIP:
        return False


class Stub:
    """Stands for every global data.pkl names (torch's tensor rebuilders, storage types, dtypes),
    so that nothing from the file runs: epoch and step need none of what they would build."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return Stub()

    def __setstate__(self, state):
        pass


class TrainingDictUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            # not dict: a module's state_dict is pickled with its _metadata attribute, which only
            # an object with a __dict__ can take
            return collections.OrderedDict
        return Stub

    def persistent_load(self, saved_id):
        return None  # a tensor's storage: its bytes stay in the archive


def read_epoch_step(path):
    """[epoch, step] of the dict Chinese-CLIP's training saves, or [None, None]."""
    pickled = read_data_pkl(path)
    if pickled is None:
        return [None, None]
    try:
        loaded = TrainingDictUnpickler(io.BytesIO(pickled)).load()
    except Exception:  # a damaged or foreign pickle raises anything: it only means "not known"
        return [None, None]
    found = [loaded.get("epoch"), loaded.get("step")] if isinstance(loaded, dict) else []
    return found if len(found) == 2 and all(type(value) is int for value in found) else [None, None]


def read_data_pkl(path):
    try:
        with zipfile.ZipFile(path) as archive:
            top = top_folder(archive.namelist())
            return None if top is None else archive.read(top + "data.pkl")
    except NOT_A_ZIP:
        return None


def top_folder(names):
    """'epoch5/' for torch.save's epoch5.pt: it names the archive's folder after the file."""
    return next((name[:-len("data.pkl")] for name in names
                 if name.endswith("/data.pkl") and name.count("/") == 1), None)


def state_digest(path):
    """SHA-256 of the training state alone: data.pkl and the tensor records, by their names in
    the archive's folder, so two saves of one state under two file names get one digest (the
    folder's name, version, byteorder and .data/serialization_id differ per save)."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(path) as archive:
            top = top_folder(archive.namelist())
            if top is None:
                return None
            for info in sorted(state_records(archive, top), key=lambda info: info.filename):
                name = info.filename[len(top):]
                digest.update(f"{name}\0{info.file_size}\0".encode("utf-8"))
                with archive.open(info) as record:
                    for block in iter(lambda: record.read(BLOCK), b""):
                        digest.update(block)
    except NOT_A_ZIP:
        return None
    return digest.hexdigest()


def state_signature(path):
    """SHA-256 of the state records' names (in the archive's folder), sizes and CRC-32s as the zip
    directory lists them, no record read: saves whose signatures differ hold different states, so
    only files of one signature are read in full by state_digest. (Records written without a
    CRC-32 list 0: their signatures then differ only by size, and state_digest decides.)"""
    try:
        with zipfile.ZipFile(path) as archive:
            top = top_folder(archive.namelist())
            if top is None:
                return None
            records = sorted(state_records(archive, top), key=lambda info: info.filename)
    except NOT_A_ZIP:
        return None
    listed = "\n".join(f"{info.filename[len(top):]}\0{info.file_size}\0{info.CRC}" for info in records)
    return hashlib.sha256(listed.encode("utf-8")).hexdigest()


def state_records(archive, top):
    return [info for info in archive.infolist() if info.filename == top + "data.pkl"
            or (info.filename.startswith(top + "data/") and not info.filename.endswith("/"))]


def sample_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        for offset in sorted({0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)}):
            handle.seek(offset)
            digest.update(handle.read(SAMPLE))
    return digest.hexdigest()


def full_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


class Facts:
    """What is known of each file's content by the file's identity (device, inode, size, mtime,
    ctime): learned in this look, or in an earlier one and kept in the cache file, so that an
    unchanged file is not read again."""

    def __init__(self, path):
        self.path = path
        self.earlier = load_cache(path) if path else {}
        self.now = {}  # identity -> facts, for the files of this look
        self.learned = False

    def get(self, entry, name, compute):
        """The fact NAME of ENTRY's file: known, or COMPUTE(path) (which may raise OSError)."""
        key = entry["_key"]
        known = self.now.setdefault(key, dict(self.earlier.get(key, {})))
        if name in known:
            entry["cached"] = entry["cached"] or name in self.earlier.get(key, {})
            return known[name]
        known[name] = compute(entry["path"])
        self.learned = True
        return known[name]

    def save(self):
        """Keep this look's files first, then earlier ones, CACHE_LIMIT in all."""
        if not self.path or not self.learned:
            return
        kept = dict(self.now)
        for key, known in self.earlier.items():
            if len(kept) >= CACHE_LIMIT:
                break
            kept.setdefault(key, known)
        kept = dict(list(kept.items())[:CACHE_LIMIT])
        write_atomically(self.path, json.dumps({"version": 1, "facts": kept}))


def load_cache(path):
    try:
        with open(path, encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, ValueError, RecursionError):  # none yet, unreadable or damaged: start afresh
        return {}
    facts = stored.get("facts") if isinstance(stored, dict) else None
    if not isinstance(facts, dict):
        return {}
    return {key: {name: value for name, value in known.items() if is_valid_fact(name, value)}
            for key, known in facts.items() if isinstance(known, dict)}


def is_valid_fact(name, value):
    if name == "epoch_step":
        return (isinstance(value, list) and len(value) == 2
                and all(part is None or type(part) is int for part in value))
    is_digest = isinstance(value, str) and HEX_DIGEST.fullmatch(value) is not None
    return is_digest or (name in ("state", "signature") and value is None)


def write_atomically(path, text):
    """Never a half-written cache, never a folder made, never through a planted link; a folder
    that is missing or read-only only means the next look computes again."""
    folder = os.path.dirname(path) or "."
    temp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except OSError:
        try:
            os.unlink(temp)
        except OSError:
            pass


def note(path, why):
    return {"path": os.fsencode(path).decode("utf-8", "backslashreplace"), "why": why}


def why_unreadable(error):
    if isinstance(error, FileNotFoundError):
        return "it vanished while being listed"  # training rotating its files
    return f"it cannot be read ({error.strerror or error})"


def is_utf8(path):
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:  # os.listdir and glob give an undecodable byte as a lone surrogate
        return False


def learn(entry, what, skipped):
    """Run WHAT(entry); when the file cannot be read, mark ENTRY gone and say why in SKIPPED."""
    try:
        return what(entry)
    except OSError as error:
        entry["_gone"] = True
        skipped.append(note(entry["path"], why_unreadable(error)))
        return None


def alike(files, key):
    """The FILES that share their KEY (not None) with a file of another inode."""
    groups = {}
    for entry in files:
        value = None if entry.get("_gone") else key(entry)
        if value is not None:
            groups.setdefault(value, []).append(entry)
    return [entry for group in groups.values() if len({entry["inode"] for entry in group}) > 1
            for entry in group]


def add_digests(files, facts, skipped):
    """sha256 only where neither the size nor the first, middle and last MiB tell files apart."""
    for entry in alike(files, lambda entry: entry["size"]):
        entry["_sample"] = learn(entry, lambda entry: facts.get(entry, "sample", sample_digest), skipped)
    for entry in alike(files, lambda entry: entry.get("_sample") and (entry["size"], entry["_sample"])):
        entry["sha256"] = learn(entry, lambda entry: facts.get(entry, "sha256", full_digest), skipped)


def add_states(files, facts, skipped):
    """state only where files saved at one epoch and step list their records alike: the same epoch
    and step is common (experiments compared at one epoch, a rerun), and state_digest reads every
    byte of a multi-GB file, where the signature reads the zip directory alone."""
    same_save = alike(files, lambda entry: None if entry["epoch"] is None else (entry["epoch"], entry["step"]))
    for entry in same_save:
        entry["_signature"] = learn(entry, lambda entry: facts.get(entry, "signature", state_signature), skipped)
    for entry in alike(same_save, lambda entry: entry.get("_signature") and
                       (entry["epoch"], entry["step"], entry["_signature"])):
        entry["state"] = learn(entry, lambda entry: facts.get(entry, "state", state_digest), skipped)


def listing(pattern, facts):
    kind, searched, paths = matching(pattern)
    skipped = [note(path, "its name is not UTF-8") for path in paths if not is_utf8(path)]
    files = [{"path": path} for path in paths if is_utf8(path)]
    for entry in files:
        learn(entry, lambda entry: describe(entry, facts), skipped)
    add_digests(files, facts, skipped)
    add_states(files, facts, skipped)
    shown = [{name: value for name, value in entry.items() if not name.startswith("_")}
             for entry in files if not entry.get("_gone")]
    return {"pattern": pattern, "kind": kind, "searched": searched, "files": shown, "skipped": skipped}


def main(argv):
    facts = Facts(argv[0])
    others = {path: stat_if_there(path) for path in json.loads(argv[1])}
    sets = [listing(pattern, facts) for pattern in argv[2:]]
    facts.save()
    # the server's clock: whether a file has been left alone long enough is judged by it
    answer = {"sets": sets, "files": others, "now_ns": time.time_ns()}
    # ASCII, so that the line goes out whatever the server's locale, and a pattern that is not
    # UTF-8 as \udcxx rather than as an encoding error
    sys.stdout.write(MARKER + json.dumps(answer) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
