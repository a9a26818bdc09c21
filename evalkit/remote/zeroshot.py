"""Zero-shot image classification with Chinese-CLIP's own functions, and its preflight.

Usage (on the server, beside provenance.py, with Chinese-CLIP on PYTHONPATH):
    python zeroshot.py check --images DATASET/test --label-file DATASET/label_cn.txt
        --checkpoint CKPT --chinese-clip-dir DIR --cache FILE (--gpu N | --cpu)
    python zeroshot.py evaluate --dataset NAME --images DATASET/test --label-file DATASET/label_cn.txt
        --checkpoint CKPT --vision-model M --text-model M --output RESULT.json --hits HITS.json
        [--predictions TOP5.jsonl] [--context-length 52] [--img-batch-size 64] [--device auto|cuda|cpu]

`check` reads only: label lines = class folders, no blank line, no empty class folder, folder
names in ImageFolder's order, every image readable. It prints the provenance line
(EVALKIT-PROVENANCE, as provenance.py does, with this dataset's facts) and one EVALKIT-ZEROSHOT
line: the refusal (a sentence and its fix) or null.

`evaluate` is cn_clip/eval/zeroshot_evaluation.py's __main__, step for step, calling its
functions: the model built by cn_clip.clip.utils.create_model, made fp32 by
convert_models_to_fp32 before the checkpoint is loaded (so no weight passes through fp16), the
same templates chosen by the dataset's folder name, upstream's zero_shot_classifier,
get_zeroshot_dataset (ImageFolder, image_transform) and run(). Where upstream cannot run it is
changed from outside and says so in the result: on the CPU its `.to(args.gpu)` gets "cpu";
with numpy >= 2.4 its accuracy() (float() of a 1-element array, an error there) is replaced
by the same count through .item(). top-1 is run()'s; top-5 and mean per-class recall come
from run()'s softmax outputs and ImageFolder's targets, as CLIP_benchmark computes them.

Nothing large is written, and all of it through atomic.py (uploaded beside it): the result JSON,
each image's hits (query_hits.json's format, direction "zeroshot_classification") and, with
--predictions, each image's top-5 classes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # atomic.py beside it, however it was started
import atomic  # noqa: E402  (evalkit uploads both)

FORMAT = "evalkit-query-hits/1"
TASK = "zeroshot_classification"
MARKER = "EVALKIT-ZEROSHOT "
PROVENANCE_MARKER = "EVALKIT-PROVENANCE "
# torchvision.datasets.folder.IMG_EXTENSIONS: what ImageFolder reads (case-insensitive)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# zeroshot_evaluation.py's template_dict: the dataset's folder name picks the templates
TEMPLATE_SETS = {"fgvc-aircraft-2013b-variants102": "aircraft_templates", "food-101": "food_templates",
                 "oxford-flower-102": "flower_templates", "eurosat_clip": "eurosat_templates",
                 "resisc45_clip": "eurosat_templates", "country211": "country211_templates"}
GENERIC_TEMPLATES = "openai_templates"
RESAMPLES = 10_000
SEED = 29
UPSTREAM_SCRIPT = "zeroshot_evaluation.py"


# ----------------------------------------------------------------------------- the dataset

def read_labels(path: str) -> list:
    """Upstream's reading: one class per line of readlines(), stripped (a blank line is a class)."""
    with open(path, "r", encoding="utf8") as handle:
        return [line.strip() for line in handle.readlines()]


def class_folders(images: str) -> list:
    """ImageFolder's classes: the sub-folders, sorted by name."""
    return sorted(entry.name for entry in os.scandir(images) if entry.is_dir())


def images_of(folder: str) -> list:
    return sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS)
                  and os.path.isfile(os.path.join(folder, name)))


def refusal(images: str, label_file: str, checkpoint: str):
    """(sentence, fix) for the first thing upstream would get wrong or fail on; None when none."""
    if not os.path.isfile(checkpoint):
        return (f"the checkpoint {checkpoint} does not exist", "check --model-path (relative paths are under DATAPATH)")
    failed = next((check for check in dataset_checks(images, label_file) if not check["ok"]), None)
    return None if failed is None else (failed["found"], failed["fix"])


def dataset_checks(images: str, label_file: str):
    """Each of the dataset's checks, in the order upstream would trip over them, as
    {"name", "ok", "found", "fix"} (found: what was seen; on a failure the sentence). Lazy: the
    preflight stops at the first failure, the doctor (doctor_probe.py) takes them all. After a
    missing or unreadable label file or image folder nothing else can be checked."""
    labels = yield from _files_checks(images, label_file)
    if labels is None:
        return
    folders = class_folders(images)
    yield _blank_line_check(labels, label_file)
    yield _count_check(labels, folders, images, label_file)
    yield _numbering_check(folders, images)
    yield _empty_folders_check(folders, images, label_file)
    yield _images_check(folders, images)


def _check(name: str, found: str, fix=None) -> dict:
    return {"name": name, "ok": fix is None, "found": found, "fix": fix}


def _files_checks(images: str, label_file: str):
    """The label file (UTF-8) and the image folder, or a ✗ for the first missing; returns the labels."""
    if not os.path.isfile(label_file):
        yield _check("label file", f"{label_file} does not exist",
                     "write label_cn.txt: the Chinese name of class k on line k")
        return None
    if not os.path.isdir(images):
        yield _check("image folder", f"{images} does not exist",
                     f"put the images in {images}/<class id>/, one folder per class")
        return None
    try:
        labels = read_labels(label_file)
    except UnicodeDecodeError:
        yield _check("label file", f"{label_file} is not UTF-8 text", "save it as UTF-8, one class name per line")
        return None
    yield _check("label file", f"{label_file}: {len(labels)} lines of UTF-8 text")
    return labels


def _blank_line_check(labels: list, label_file: str) -> dict:
    blank = next((number for number, name in enumerate(labels, 1) if not name), None)
    if blank is None:
        return _check("blank lines", f"no blank line in {os.path.basename(label_file)}")
    return _check("blank lines", f"{label_file} line {blank} is blank, which upstream reads as a class with an empty name",
                  "remove the blank line: class k is line k, one line per class folder")


def _count_check(labels: list, folders: list, images: str, label_file: str) -> dict:
    if len(labels) == len(folders):
        return _check("class names", f"{len(labels)} class names for {len(folders)} class folders")
    return _check("class names", f"{label_file} has {len(labels)} class names but {images} has {len(folders)} class folders",
                  "write one line per class folder, line k naming the k-th folder in sorted order")


def _numbering_check(folders: list, images: str) -> dict:
    numbered = [name for name in folders if name.isdigit()]
    if len(numbered) != len(folders):
        return _check("folder order", "the class folders are names, not numbers: class k is the k-th in sorted order")
    if [int(n) for n in folders] == sorted(int(n) for n in folders):
        return _check("folder order", "the numbered class folders sort in numeric order (zero-padded)")
    return _check("folder order", f"the class folders of {images} are numbers that do not sort in numeric order "
                  f"({', '.join(folders[:4])} …), so ImageFolder would give classes the wrong names",
                  "zero-pad the folder names to 3 digits (000, 001, …) as upstream's datasets are")


def _empty_folders_check(folders: list, images: str, label_file: str) -> dict:
    empty = next((name for name in folders if not images_of(os.path.join(images, name))), None)
    if empty is None:
        return _check("empty class folders", "every class folder has images")
    return _check("empty class folders", f"the class folder {os.path.join(images, empty)} has no image ImageFolder reads "
                  f"({', '.join(IMAGE_EXTENSIONS[:3])} …), so torchvision would stop on it",
                  f"add its images, or remove the folder and its line in {os.path.basename(label_file)}")


def _images_check(folders: list, images: str) -> dict:
    count = 0
    for name in folders:
        folder = os.path.join(images, name)
        for image in images_of(folder):
            count += 1
            problem = unreadable(os.path.join(folder, image))
            if problem:
                return _check("images", f"{os.path.join(folder, image)} cannot be read as an image ({problem})",
                              "replace the file or remove it")
    return _check("images", f"all {count} images can be read")


def templates_check(dataset: str) -> dict:
    """Which template set upstream will use for DATASET (chosen by its folder name), and how many."""
    chosen = template_set(dataset)
    try:
        from cn_clip.eval import cvinw_zeroshot_templates as templates_module
        count = f"{len(getattr(templates_module, chosen))} templates"
    except Exception as exc:  # noqa: BLE001 - cn_clip's import pulls torch and more: say why, check goes on
        count = f"not counted: {type(exc).__name__}"
    why = "its folder name picks them" if chosen != GENERIC_TEMPLATES else "the generic set: no set is named for it"
    return _check("templates", f"{dataset}: {chosen} ({count}); {why}")


def unreadable(path: str):
    from PIL import Image  # the env's Pillow, the one ImageFolder opens the images with
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # noqa: BLE001 - any failure to decode is the answer: what it was is said
        return f"{type(exc).__name__}: {exc}"
    return None


def listing_digest(images: str, label_file: str) -> tuple:
    """(SHA-256, images, classes) of what is classified: the label file and ImageFolder's samples
    (relative path, class) in order. Two runs are paired only when it matches."""
    digest = hashlib.sha256()
    with open(label_file, "rb") as handle:
        digest.update(handle.read())
    count, folders = 0, class_folders(images)
    for index, name in enumerate(folders):
        for image in images_of(os.path.join(images, name)):
            digest.update(f"\n{name}/{image}\t{index}".encode("utf-8"))
            count += 1
    return digest.hexdigest(), count, len(folders)


def template_set(dataset: str) -> str:
    return TEMPLATE_SETS.get(dataset, GENERIC_TEMPLATES)


# ----------------------------------------------------------------------------- check

def check(args: argparse.Namespace) -> int:
    import provenance  # beside this script on the server (evalkit uploads both)
    found = refusal(args.images, args.label_file, args.checkpoint)
    cache = provenance.HashCache(args.cache)
    facts = {"server": provenance.server_facts(args.chinese_clip_dir, None if args.cpu else args.gpu)}
    upstream = os.path.join(args.chinese_clip_dir, "cn_clip", "eval", UPSTREAM_SCRIPT)
    facts["server"]["upstream_scripts_sha256"][UPSTREAM_SCRIPT] = \
        provenance.sha256_of(upstream) if os.path.isfile(upstream) else None
    try:
        facts["checkpoint"] = provenance.checkpoint_facts(args.checkpoint, cache)
        if found is None:
            digest, count, classes = listing_digest(args.images, args.label_file)
            facts["dataset"] = {"images": args.images, "labels": args.label_file, "num_images": count,
                                "num_classes": classes, "listing_sha256": digest}
    except OSError as exc:
        facts["problem"] = f"{exc.filename}: {exc.strerror}"
    cache.save()
    sys.stdout.write(PROVENANCE_MARKER + json.dumps(facts, ensure_ascii=False) + "\n")
    answer = {"refusal": None if found is None else {"message": found[0], "fix": found[1]}}
    sys.stdout.write(MARKER + json.dumps(answer, ensure_ascii=False) + "\n")
    return 0


# ----------------------------------------------------------------------------- evaluate

def _numpy_needs_item() -> bool:
    import numpy
    major, minor = (int(part) for part in numpy.__version__.split(".")[:2])
    return (major, minor) >= (2, 4)


def _accuracy_by_item(output, target, topk=(1,)):
    """upstream's accuracy(), the count taken with .item(): numpy >= 2.4 refuses float() of an array."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum(0, keepdim=True).item()) for k in topk]


def load_model(args: argparse.Namespace, device):
    """zeroshot_evaluation.py's model: built, made fp32 (its amp and fp32 precisions), then loaded."""
    import torch
    from cn_clip.clip.utils import create_model
    from cn_clip.training.main import convert_models_to_fp32
    model = create_model(f"{args.vision_model}@{args.text_model}")  # convert_weights inside, as upstream
    convert_models_to_fp32(model)
    model.to(device)
    checkpoint = torch.load(args.checkpoint, map_location="cpu")
    sd = checkpoint["state_dict"]
    if next(iter(sd.items()))[0].startswith("module"):
        sd = {k[len("module."):]: v for k, v in sd.items() if "bert.pooler" not in k}
    model.load_state_dict(sd)
    model.eval()
    return model


def classify(args: argparse.Namespace) -> dict:
    """Upstream's classifier and run(); the outputs reduced to each image's hits and top-5."""
    import torch
    import cn_clip.eval.zeroshot_evaluation as upstream
    from cn_clip.clip.utils import image_transform
    from cn_clip.eval import cvinw_zeroshot_templates as templates_module
    from cn_clip.eval.data import get_zeroshot_dataset
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    changes = []
    if device == "cuda":
        torch.cuda.set_device(0)
        args.gpu = 0
    else:
        args.gpu = "cpu"
        changes.append("on the CPU: upstream's .to(args.gpu) given \"cpu\"")
    if _numpy_needs_item():
        upstream.accuracy = _accuracy_by_item
        changes.append("numpy >= 2.4: upstream's accuracy() counted with .item() instead of float() of an array")
    model = load_model(args, device)
    resolution = model.visual.input_resolution
    args.datapath, args.index = args.images, ""
    data = get_zeroshot_dataset(args, image_transform(resolution))
    classnames = read_labels(args.label_file)
    chosen = template_set(args.dataset)
    classifier = upstream.zero_shot_classifier(model, classnames, getattr(templates_module, chosen), args)
    top1, outputs = upstream.run(model, classifier, data.dataloader, args)
    targets = torch.tensor(data.dataloader.dataset.targets, dtype=torch.long)
    return {"upstream_top1": float(top1), "outputs": outputs.float().cpu(), "targets": targets,
            "templates": chosen, "num_templates": len(getattr(templates_module, chosen)), "changes": changes,
            "num_classes": len(classnames), "device": device}


def scores(outputs, targets, num_classes: int) -> dict:
    """top-1 and top-5 hits per image, and mean per-class recall (of top-1, over the classes with images)."""
    k = min(5, num_classes)
    top = outputs.topk(k, 1, True, True)[1]
    top1 = (top[:, 0] == targets).tolist()
    top5 = (top == targets.view(-1, 1)).any(dim=1).tolist()
    per_class = {}
    for hit, target in zip(top1, targets.tolist()):
        seen, hits = per_class.get(target, (0, 0))
        per_class[target] = (seen + 1, hits + hit)
    recall = sum(hits / seen for seen, hits in per_class.values()) / len(per_class)
    return {"top1_hits": "".join("1" if hit else "0" for hit in top1),
            "top5_hits": "".join("1" if hit else "0" for hit in top5),
            "mean_per_class_recall": recall * 100, "top": top, "k": k}


def ci95(top1: str, top5: str, targets: list, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Percentile intervals (percent) of top-1, top-5 and mean per-class recall over resamples of
    the images. An image is one of (class, level) cells, level 0-2 = how many of top-5 and top-1
    it hits (nested), so a resample is a multinomial draw over the cells: O(cells) per draw."""
    import numpy as np
    classes = sorted(set(targets))
    position = {c: i for i, c in enumerate(classes)}
    cells = np.zeros((len(classes), 3), dtype=np.int64)
    for one, five, target in zip(top1, top5, targets):
        cells[position[target], int(one == "1") + int(five == "1")] += 1
    n = len(targets)
    rng = np.random.default_rng(seed)
    values = {"top1": [], "top5": [], "mean_per_class_recall": []}
    for start in range(0, resamples, 1000):
        draws = rng.multinomial(n, cells.ravel() / n, size=min(1000, resamples - start)).reshape(-1, len(classes), 3)
        seen = draws.sum(axis=2)
        values["top1"].append(draws[:, :, 2].sum(axis=1) / n)
        values["top5"].append(draws[:, :, 1:].sum(axis=(1, 2)) / n)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = draws[:, :, 2] / seen
        values["mean_per_class_recall"].append(np.nanmean(np.where(seen > 0, per_class, np.nan), axis=1))
    return {key: [float(np.percentile(np.concatenate(v), 2.5)) * 100, float(np.percentile(np.concatenate(v), 97.5)) * 100]
            for key, v in values.items()}


def write_json(path: str, document: dict) -> None:
    """Through atomic.py, as query_hits.py writes beside it: the results folder may be writable by
    others, and a symlink planted at a temporary name or at PATH must redirect no write."""
    atomic.write_atomically(path, json.dumps(document, ensure_ascii=False), mode=0o644)


def evaluate(args: argparse.Namespace) -> int:
    started = time.monotonic()
    ran = classify(args)
    found = scores(ran["outputs"], ran["targets"], ran["num_classes"])
    targets = ran["targets"].tolist()
    n = len(targets)
    digest, _, _ = listing_digest(args.images, args.label_file)
    top1 = found["top1_hits"].count("1") * 100 / n
    if abs(top1 - ran["upstream_top1"] * 100) > 1e-9:  # the same outputs, counted twice: never differ
        raise SystemExit(f"zeroshot: top-1 from the outputs ({top1}) differs from upstream's run() "
                         f"({ran['upstream_top1'] * 100})")
    result = {"success": True, "task": TASK, "top1": ran["upstream_top1"] * 100,
              "top5": found["top5_hits"].count("1") * 100 / n, "top5_k": found["k"],
              "mean_per_class_recall": found["mean_per_class_recall"], "num_images": n,
              "num_classes": ran["num_classes"], "templates": ran["templates"].replace("_templates", ""),
              "num_templates": ran["num_templates"], "context_length": args.context_length,
              "device": ran["device"], "upstream": "cn_clip/eval/zeroshot_evaluation.py (its functions)",
              "changes": ran["changes"]}
    hits = {"format": FORMAT, "bootstrap": {"resamples": RESAMPLES, "seed": SEED, "percentiles": [2.5, 97.5]},
            TASK: {"queries": n, "reference_sha256": digest, "hits": {"top1": found["top1_hits"],
                                                                     "top5": found["top5_hits"]},
                   "targets": targets, "ci95": ci95(found["top1_hits"], found["top5_hits"], targets)}}
    if args.predictions:  # a line per image: small enough to be made whole before it is written
        atomic.write_atomically(args.predictions, "".join(json.dumps({"target": target, "top5": row}) + "\n"
                                                          for row, target in zip(found["top"].tolist(), targets)),
                                mode=0o644)
    write_json(args.hits, hits)
    write_json(args.output, result)
    print(f"zeroshot: {n} images, {ran['num_classes']} classes, {result['templates']} templates "
          f"({result['num_templates']}): top-1 {result['top1']:.2f} top-5 {result['top5']:.2f} "
          f"mean per-class recall {result['mean_per_class_recall']:.2f} in {time.monotonic() - started:.1f}s",
          flush=True)
    for change in ran["changes"]:
        print(f"zeroshot: {change}", flush=True)
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="zeroshot.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    checking = commands.add_parser("check")
    evaluating = commands.add_parser("evaluate")
    for sub in (checking, evaluating):
        sub.add_argument("--images", required=True, help="the split's ImageFolder, DATASET/test")
        sub.add_argument("--label-file", required=True, help="DATASET/label_cn.txt")
        sub.add_argument("--checkpoint", required=True)
    import provenance  # beside this script on the server (evalkit uploads both)
    provenance.add_server_arguments(checking)
    evaluating.add_argument("--dataset", required=True, help="the dataset's folder name: it picks the templates")
    evaluating.add_argument("--vision-model", required=True)
    evaluating.add_argument("--text-model", required=True)
    evaluating.add_argument("--output", required=True)
    evaluating.add_argument("--hits", required=True)
    evaluating.add_argument("--predictions", help="each image's target and top-5 classes (JSONL)")
    evaluating.add_argument("--context-length", type=int, default=52)
    evaluating.add_argument("--img-batch-size", type=int, default=64)
    evaluating.add_argument("--num-workers", type=int, default=4)
    evaluating.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return check(args) if args.command == "check" else evaluate(args)


if __name__ == "__main__":
    raise SystemExit(main())
