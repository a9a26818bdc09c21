"""Report, as one JSON object on a stdout line starting with EVALKIT-DOCTOR, what `evalkit doctor` checks.

Usage (on the server, in the evaluation env; every argument is optional, a section runs only
when its argument is given):
  python doctor_probe.py [--clip-dir DIR] [--device cuda|cpu] [--images LMDB_DIR --texts JSONL]
         [--classification NAME --class-images DATASET/test --label-file DATASET/label_cn.txt]
         [--checkpoint PATH] [--output-root DIR]

A classification dataset is checked by zeroshot.py's own preflight checks (beside this script),
each one reported, and the template set upstream will use.

It only reads. Standard library, plus torch and lmdb when the env has them: every failure,
a missing module included, is reported as data, never as a traceback. evalkit decides on the
laptop (evalkit/doctor.py) what these facts mean.
"""
import argparse
import collections
import inspect
import json
import os
import pickle
import shutil
import sys
import zipfile

MARKER = "EVALKIT-DOCTOR "  # whatever the env's activation prints, the facts are on this line
UPSTREAM_SCRIPTS = ("extract_features.py", "make_topk_predictions.py", "make_topk_predictions_tr.py",
                    "evaluation.py", "evaluation_tr.py", "transform_ir_annotation_to_tr.py")
EXAMPLES = 3  # how many bad lines / missing ids are reported by name


def describe_error(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def python_facts():
    return {"version": sys.version.split()[0], "executable": sys.executable}


def torch_facts(device):
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        return {"error": describe_error(exc)}
    facts = {"version": torch.__version__, "cuda_build": torch.version.cuda, "gpu": None}
    if device == "cuda":
        facts["gpu"] = gpu_facts(torch)
    return facts


def gpu_facts(torch):
    facts = {"visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "available": False}
    try:
        facts["available"] = bool(torch.cuda.is_available())
        if facts["available"]:
            free, total = torch.cuda.mem_get_info(0)
            facts.update(count=torch.cuda.device_count(), name=torch.cuda.get_device_name(0),
                         free=free, total=total)
    except Exception as exc:  # driver and runtime errors come as RuntimeError or worse
        facts["error"] = describe_error(exc)
    return facts


def clip_facts(clip_dir):
    eval_dir = os.path.join(clip_dir, "cn_clip", "eval")
    facts = {"dir": clip_dir, "dir_exists": os.path.isdir(clip_dir),
             "missing_scripts": [name for name in UPSTREAM_SCRIPTS
                                 if not os.path.isfile(os.path.join(eval_dir, name))]}
    try:
        import cn_clip
        facts["module"] = os.path.dirname(os.path.abspath(cn_clip.__file__))
    except Exception as exc:  # cn_clip imports torch and more: any of them may fail
        facts["import_error"] = describe_error(exc)
    return facts


def open_lmdb(lmdb_dir):
    """(transaction, None) or (None, why not)."""
    try:
        import lmdb
    except ImportError:
        return None, "the python module lmdb is not installed in this env"
    try:
        env = lmdb.open(lmdb_dir, readonly=True, create=False, lock=False, readahead=False,
                        meminit=False)
        return env.begin(buffers=True), None
    except lmdb.Error as exc:
        return None, f"unreadable LMDB: {describe_error(exc)}"


def image_facts(lmdb_dir):
    facts = {"path": lmdb_dir, "exists": os.path.isdir(lmdb_dir), "count": None, "problem": None}
    if not facts["exists"]:
        return facts, None
    txn, facts["problem"] = open_lmdb(lmdb_dir)
    if txn is None:
        return facts, None
    value = txn.get(b"num_images")
    if value is None:
        facts["problem"] = "the LMDB has no num_images key"
    else:
        try:
            facts["count"] = int(bytes(value).decode("utf-8"))
        except ValueError:
            facts["problem"] = f"its num_images is not a number: {bytes(value)[:40]!r}"
    return facts, txn


def text_facts(path, txn):
    """Line count, the first bad lines, and the image ids named that the LMDB lacks."""
    facts = {"path": path, "exists": os.path.isfile(path), "lines": 0, "bad_lines": [],
             "bad_count": 0, "image_ids": 0, "missing_ids": [], "missing_count": 0,
             "ids_checked": txn is not None}
    if not facts["exists"]:
        return facts
    named = {}
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                facts["lines"] = number
                problem = line_problem(raw, number, named)
                if problem:
                    facts["bad_count"] += 1
                    if len(facts["bad_lines"]) < EXAMPLES:
                        facts["bad_lines"].append({"line": number, "problem": problem})
    except OSError as exc:
        facts["read_error"] = describe_error(exc)
        return facts
    facts["image_ids"] = len(named)
    if txn is not None:
        for image_id, number in named.items():
            if txn.get(image_id.encode("utf-8")) is None:
                facts["missing_count"] += 1
                if len(facts["missing_ids"]) < EXAMPLES:
                    facts["missing_ids"].append({"id": image_id, "line": number})
    return facts


def line_problem(raw, number, named):
    """Why upstream's readers would choke on this line, or None; records its image ids."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "is not UTF-8"
    except ValueError as exc:
        return f"is not JSON ({exc})"
    if not isinstance(obj, dict):
        return "is not a JSON object"
    absent = [key for key in ("text_id", "text", "image_ids") if key not in obj]
    if absent:
        return f"has no {' or '.join(absent)}"
    if not isinstance(obj["image_ids"], list) or not obj["image_ids"]:
        return "has image_ids that is not a non-empty list"
    for image_id in obj["image_ids"]:
        named.setdefault(str(image_id), number)
    return None


def checkpoint_facts(path):
    facts = {"path": path, "exists": os.path.isfile(path), "readable": os.access(path, os.R_OK)}
    if not facts["exists"] or not facts["readable"]:
        return facts
    facts["size"] = os.path.getsize(path)
    if zipfile.is_zipfile(path):
        # torch.save's format since 1.6: the tensors' shapes are in data.pkl, readable without
        # importing torch (seconds on a CUDA server) and without running any code from the file
        try:
            return dict(facts, **zip_checkpoint_facts(path))
        except UnsupportedPickle:
            pass  # something only torch itself can read: ask it
        except Exception as exc:  # a damaged archive raises anything: report it as data
            facts["load_error"] = describe_error(exc)
            return facts
    try:
        import torch
    except Exception as exc:
        facts["load_error"] = f"torch cannot be imported ({describe_error(exc)})"
        facts["torch_missing"] = True
        return facts
    try:
        loaded = load_checkpoint(torch, path)
    except Exception as exc:  # torch.load raises anything for a damaged file: report it as data
        facts["load_error"] = describe_error(exc)
        return facts
    facts.update(state_dict_facts(lambda value: isinstance(value, torch.Tensor), loaded))
    return facts


class UnsupportedPickle(Exception):
    """data.pkl names a global the shape reader does not know."""


class TensorShape:
    def __init__(self, shape):
        self.shape = list(shape)


class TorchGlobal:
    """Stands for any other torch global (dtypes, storage classes): never code from the file."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _rebuild_tensor(storage, storage_offset, size, *args, **kwargs):
    return TensorShape(size)


def _rebuild_parameter(data, *args, **kwargs):
    return data


def _rebuild_from_type(function, new_type, args, state):
    return function(*args)


TORCH_REBUILDERS = {"_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor,
                    "_rebuild_tensor_v3": _rebuild_tensor, "_rebuild_parameter": _rebuild_parameter,
                    "_rebuild_parameter_with_state": _rebuild_parameter,
                    "_rebuild_from_type_v2": _rebuild_from_type}
SAFE_GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set,
                ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice,
                ("builtins", "complex"): complex}
ELEMENT_BYTES = {"Half": 2, "BFloat16": 2, "Float": 4, "Double": 8, "Long": 8, "Int": 4, "Short": 2,
                 "Char": 1, "Byte": 1, "Bool": 1}


class ShapeUnpickler(pickle.Unpickler):
    """Reads data.pkl as torch.load would, with every tensor replaced by its shape."""

    def __init__(self, file, storages):
        super().__init__(file)
        self.storages = storages  # key -> bytes the tensors need, from the persistent ids

    def find_class(self, module, name):
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        if module.split(".")[0] == "torch":
            if module.startswith("torch._") and name in TORCH_REBUILDERS:
                return TORCH_REBUILDERS[name]
            return type(name, (TorchGlobal,), {})
        raise UnsupportedPickle(f"{module}.{name}")

    def persistent_load(self, saved_id):
        kind, storage_type, key, _location, numel = saved_id
        if kind != "storage":
            raise UnsupportedPickle(kind)
        # typed storages count elements (torch.HalfStorage), untyped ones bytes
        element = ELEMENT_BYTES.get(getattr(storage_type, "__name__", "").replace("Storage", ""), 1)
        self.storages[str(key)] = int(numel) * element
        return None


def zip_checkpoint_facts(path):
    """keys, shapes and the same refusals torch.load gives for missing tensor data."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickled = next((name for name in names if name.endswith("data.pkl") and name.count("/") == 1), None)
        if pickled is None:
            raise ValueError("no data.pkl in the archive: not a torch checkpoint")
        prefix = pickled[: -len("data.pkl")]
        storages = {}
        with archive.open(pickled) as file:
            loaded = ShapeUnpickler(file, storages).load()
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    for key, needed in storages.items():
        stored = sizes.get(f"{prefix}data/{key}")
        if stored is None or stored < needed:
            raise ValueError(f"tensor data {prefix}data/{key} is missing or shorter than its tensors need")
    return state_dict_facts(lambda value: isinstance(value, TensorShape), loaded)


def load_checkpoint(torch, path):
    """map_location cpu, weights only (no code from the file runs), memory-mapped when possible."""
    options = {"map_location": "cpu"}
    parameters = inspect.signature(torch.load).parameters
    if "weights_only" in parameters:
        options["weights_only"] = True
    if "mmap" in parameters:
        try:
            return torch.load(path, mmap=True, **options)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # old (non-zip) files cannot be mapped; others are damaged
                raise
    return torch.load(path, **options)


def state_dict_facts(is_tensor, loaded):
    if not isinstance(loaded, dict):
        return {"keys": None, "top_type": type(loaded).__name__}
    state = loaded.get("state_dict")
    facts = {"keys": sorted(str(key) for key in loaded)[:200], "shapes": None}
    if isinstance(state, dict):
        facts["shapes"] = {str(name): list(value.shape) for name, value in state.items()
                           if is_tensor(value)}
    return facts


def disk_facts(root):
    """Free space where the outputs go: the nearest directory of root that exists."""
    existing = os.path.abspath(root)
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    try:
        usage = shutil.disk_usage(existing)
    except OSError as exc:
        return {"path": root, "existing": existing, "error": describe_error(exc)}
    return {"path": root, "existing": existing, "free": usage.free, "total": usage.total,
            "writable": os.access(existing, os.W_OK)}


def classification_facts(dataset, images, label_file):
    """zeroshot.py's preflight checks, every one (the preflight stops at the first), and the templates."""
    import zeroshot  # beside this script on the server (evalkit uploads both)
    try:
        checks = list(zeroshot.dataset_checks(images, label_file))
    except OSError as exc:  # a folder that cannot be listed: the answer, as data
        checks = [{"name": "image folder", "ok": False, "found": describe_error(exc),
                   "fix": "fix its permissions on the server"}]
    return {"checks": checks + [zeroshot.templates_check(dataset)]}


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--clip-dir")
    parser.add_argument("--device", choices=("cuda", "cpu"))
    parser.add_argument("--images")
    parser.add_argument("--texts")
    parser.add_argument("--classification", help="the dataset's folder name: it picks the templates")
    parser.add_argument("--class-images")
    parser.add_argument("--label-file")
    parser.add_argument("--checkpoint")
    parser.add_argument("--output-root")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    facts = {"python": python_facts()}
    if args.device:
        facts["torch"] = torch_facts(args.device)
    if args.clip_dir:
        facts["clip"] = clip_facts(args.clip_dir)
    if args.images and args.texts:
        facts["images"], txn = image_facts(args.images)
        facts["texts"] = text_facts(args.texts, txn)
    if args.classification:
        facts["classification"] = classification_facts(args.classification, args.class_images, args.label_file)
    if args.checkpoint:
        facts["checkpoint"] = checkpoint_facts(args.checkpoint)
    if args.output_root:
        facts["disk"] = disk_facts(args.output_root)
    sys.stdout.write(MARKER + json.dumps(facts, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
