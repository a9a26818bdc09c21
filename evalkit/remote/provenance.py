"""Report, as one JSON object on a stdout line starting with EVALKIT-PROVENANCE, what a recall
number was made from: the checkpoint's and the dataset's fingerprints, the upstream scripts and
the server's software and hardware.

Usage (on the server, in the evaluation env, with Chinese-CLIP on PYTHONPATH as the upstream
steps have it):
  python provenance.py --checkpoint PATH --images LMDB_DIR --texts JSONL --chinese-clip-dir DIR
         --cache FILE [--gpu N | --cpu]

It only reads, except the hash cache: a file's SHA-256 is computed while streaming it (never
all in memory) and kept in CACHE under its path, size and mtime, so each file is hashed once.
torch is not imported (its version file is read), so the report takes well under a second
when the hashes are cached.
"""
import argparse
import glob
import hashlib
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys

MARKER = "EVALKIT-PROVENANCE "
CHUNK = 4 << 20
UPSTREAM_SCRIPTS = ("extract_features.py", "make_topk_predictions.py", "make_topk_predictions_tr.py",
                    "transform_ir_annotation_to_tr.py", "evaluation.py", "evaluation_tr.py")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """path -> {size, mtime_ns, kind, sha256}: a file whose size and mtime are unchanged keeps its hash."""

    def __init__(self, path):
        self.path, self.changed = path, False
        try:
            with open(path, "rb") as handle:
                self.entries = json.loads(handle.read().decode("utf-8"))
        except (OSError, ValueError):
            self.entries = {}
        if not isinstance(self.entries, dict):
            self.entries = {}

    def get(self, path, kind, compute):
        """(sha256, whether it came from the cache)."""
        info = os.stat(path)
        key = {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "kind": kind}
        known = self.entries.get(path)
        if isinstance(known, dict) and all(known.get(name) == value for name, value in key.items()):
            return known["sha256"], True
        digest = compute()
        self.entries[path] = dict(key, sha256=digest)
        self.changed = True
        return digest, False

    def save(self):
        if not self.changed:
            return
        # O_EXCL, O_NOFOLLOW: nothing planted at the temporary name redirects the write
        temporary = f"{self.path}.tmp-{os.urandom(8).hex()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            with open(os.open(temporary, flags, 0o600), "w", encoding="utf-8") as handle:
                json.dump(self.entries, handle)
            os.replace(temporary, self.path)  # two runs at once: the last one's cache wins, both are right
        except OSError:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            # a read-only place costs a re-hash next time, nothing else


def lmdb_fingerprint(lmdb_dir):
    """SHA-256 over every (key, value) of the LMDB in key order: the images themselves, not the
    file's page layout; without the lmdb module, of data.mdb's bytes."""
    try:
        import lmdb
    except ImportError:
        return "file:" + sha256_of(os.path.join(lmdb_dir, "data.mdb"))
    digest = hashlib.sha256()
    try:
        env = lmdb.open(lmdb_dir, readonly=True, lock=False, readahead=False, meminit=False)
        with env.begin(buffers=False) as txn:
            for key, value in txn.cursor():
                digest.update(len(key).to_bytes(8, "big") + key + len(value).to_bytes(8, "big"))
                digest.update(value)
        env.close()
    except lmdb.Error as exc:
        raise OSError(0, f"unreadable LMDB: {exc}", lmdb_dir) from exc
    return "records:" + digest.hexdigest()


def num_images(lmdb_dir):
    try:
        import lmdb
    except ImportError:
        return None
    try:
        env = lmdb.open(lmdb_dir, readonly=True, lock=False, readahead=False, meminit=False)
        with env.begin(buffers=False) as txn:
            value = txn.get(b"num_images")
        env.close()
    except lmdb.Error:  # inspect_outputs.py reports a broken LMDB with its fix
        return None
    return int(value.decode("utf-8")) if value is not None else None


def count_texts(path):
    """(texts, text-image pairs): each line's image_ids are the images relevant to it."""
    texts = pairs = 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            texts += 1
            try:
                pairs += len(json.loads(line).get("image_ids") or ())
            except (ValueError, AttributeError, TypeError):
                pass  # the preflight names a bad line; a count here is only for the chance level
    return texts, pairs


def dataset_facts(images, texts, cache):
    data_mdb = os.path.join(images, "data.mdb")
    fingerprint, cached = cache.get(data_mdb, "lmdb", lambda: lmdb_fingerprint(images))
    num_texts, num_pairs = count_texts(texts)
    return {"images": images, "texts": texts, "num_images": num_images(images), "num_texts": num_texts,
            "num_pairs": num_pairs, "texts_sha256": sha256_of(texts), "lmdb_fingerprint": fingerprint,
            "lmdb_fingerprint_cached": cached}


def checkpoint_facts(path, cache):
    info = os.stat(path)
    digest, cached = cache.get(path, "sha256", lambda: sha256_of(path))
    return {"path": path, "size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": digest,
            "sha256_cached": cached}


def torch_facts():
    """torch's version and CUDA build from torch/version.py, without importing torch (seconds)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return {"version": None, "cuda": None}
    namespace = {}
    try:
        with open(os.path.join(os.path.dirname(spec.origin), "version.py"), encoding="utf-8") as handle:
            exec(compile(handle.read(), "torch/version.py", "exec"), namespace)  # noqa: S102 - torch's own file
    except (OSError, SyntaxError, ImportError):
        return {"version": None, "cuda": None}
    return {"version": namespace.get("__version__"), "cuda": namespace.get("cuda")}


def installed_version(distribution):
    """DISTRIBUTION's version from its dist-info (or egg-info) on sys.path, as importlib.metadata
    finds it, without importing that (half a second on a busy server)."""
    for entry in sys.path:
        for info in sorted(glob.glob(os.path.join(glob.escape(entry or "."), f"{distribution}-*.*-info"))):
            for name in ("METADATA", "PKG-INFO"):
                try:
                    with open(os.path.join(info, name), encoding="utf-8", errors="replace") as handle:
                        for line in handle:
                            if line.startswith("Version:"):
                                return line.split(":", 1)[1].strip()
                except OSError:
                    continue
    return None


def cn_clip_facts():
    spec = importlib.util.find_spec("cn_clip")
    return {"version": installed_version("cn_clip"), "path": os.path.dirname(spec.origin) if spec and spec.origin
            else None}


def run(argv, cwd=None):
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode("utf-8", "replace").strip() if done.returncode == 0 else None


def git_facts(directory):
    """The checkout's commit and whether tracked files differ from it; None when it is no git checkout."""
    top = run(["git", "-C", directory, "rev-parse", "--show-toplevel"])
    if top is None:
        return None
    status = run(["git", "-C", directory, "status", "--porcelain", "--untracked-files=no"])
    return {"commit": run(["git", "-C", directory, "rev-parse", "HEAD"]), "dirty": bool(status) if status is not None
            else None, "toplevel": top}


def gpu_facts(gpu):
    """Name and driver of GPU index GPU (CUDA_VISIBLE_DEVICES), as nvidia-smi reports them."""
    found = run(["nvidia-smi", "-i", str(gpu), "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if not found:
        return {"index": gpu, "name": None, "driver": None}
    name, _, driver = found.splitlines()[0].rpartition(",")
    return {"index": gpu, "name": name.strip(), "driver": driver.strip()}


def cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def server_facts(chinese_clip_dir, gpu):
    scripts = {name: os.path.join(chinese_clip_dir, "cn_clip", "eval", name) for name in UPSTREAM_SCRIPTS}
    return {
        "hostname": socket.gethostname(),
        "gpu": gpu_facts(gpu) if gpu is not None else "cpu",
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "torch": torch_facts(),
        "cn_clip": cn_clip_facts(),
        "chinese_clip_dir": chinese_clip_dir,
        "chinese_clip_git": git_facts(chinese_clip_dir),
        "upstream_scripts_sha256": {name: sha256_of(path) if os.path.isfile(path) else None
                                    for name, path in scripts.items()},
    }


def add_server_arguments(parser):
    """The options every provenance line needs: Chinese-CLIP's folder, the hash cache, the device
    (--gpu N or --cpu). zeroshot.py check declares them with this too."""
    parser.add_argument("--chinese-clip-dir", required=True)
    parser.add_argument("--cache", required=True)
    device = parser.add_mutually_exclusive_group(required=True)
    device.add_argument("--gpu")
    device.add_argument("--cpu", action="store_true")


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--texts", required=True)
    add_server_arguments(parser)
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    cache = HashCache(args.cache)
    facts = {"server": server_facts(args.chinese_clip_dir, None if args.cpu else args.gpu)}
    try:
        facts["checkpoint"] = checkpoint_facts(args.checkpoint, cache)
        facts["dataset"] = dataset_facts(args.images, args.texts, cache)
    except OSError as exc:  # the inspection reports a missing file with its fix; say what failed here
        facts["problem"] = f"{exc.filename}: {exc.strerror}"
    cache.save()
    sys.stdout.write(MARKER + json.dumps(facts, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
