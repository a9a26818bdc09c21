"""Report, as one JSON object on a stdout line starting with EVALKIT-FACTS, what is on the server for one evaluation.

Usage (on the server, in the evaluation env):
  python inspect_outputs.py --images LMDB_DIR --texts JSONL (--out DIR | --latest-under ROOT)
         [--checkpoint PATH] [--datapath PATH] [--file NAME=RELATIVE_PATH ...]

It only reads: the checkpoint's size and mtime, the image count the LMDB records, the texts'
line count, the output directory's manifest.json and each named file's size, mtime and number of
complete lines. evalkit decides on the laptop what these facts mean. With --latest-under, the
output directory is the one whose manifest was extracted most recently (for --datapath).
"""
import argparse
import glob
import json
import os
import sys

MANIFEST = "manifest.json"
MARKER = "EVALKIT-FACTS "  # whatever the env's activation prints, the facts are on this line


def stat_of(path):
    try:
        info = os.stat(path)
    except OSError:
        return None
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


def inode_of(path):
    """A checkpoint replaced by mv or rsync -a keeps its size and mtime, never its inode."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return f"{info.st_dev}:{info.st_ino}"


def count_lines(path):
    """(complete lines, whether the file ends mid-line): a killed writer leaves a partial line."""
    lines, last = 0, b"\n"
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines, last != b"\n"


def describe_file(path):
    facts = stat_of(path)
    if facts is None or not os.path.isfile(path):
        return None
    facts["lines"], facts["partial_last_line"] = count_lines(path)
    return facts


def count_images(lmdb_dir):
    """The num_images key upstream's LMDB builder writes (what extract_features.py iterates)."""
    if not os.path.isdir(lmdb_dir):
        return None, "missing"
    try:
        import lmdb
    except ImportError:
        return None, "the python module lmdb is not installed in this env"
    try:
        env = lmdb.open(lmdb_dir, readonly=True, lock=False, readahead=False, meminit=False)
        with env.begin(buffers=False) as txn:
            value = txn.get(b"num_images")
        env.close()
    except lmdb.Error as exc:
        return None, f"unreadable LMDB: {exc}"
    if value is None:
        return None, "the LMDB has no num_images key"
    return int(value.decode("utf-8")), None


def count_texts(path):
    if not os.path.isfile(path):
        return None
    return count_lines(path)[0]


def read_manifest(out_dir):
    path = os.path.join(out_dir, MANIFEST)
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8")), None
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"{path}: {exc}"


def latest_output_dir(root, datapath):
    newest, newest_at = None, ""
    for path in glob.glob(os.path.join(glob.escape(root), "*", MANIFEST)):
        manifest, error = read_manifest(os.path.dirname(path))
        if error or not isinstance(manifest, dict):
            continue
        if datapath and manifest.get("datapath") != datapath:
            continue
        extracted_at = str(manifest.get("extracted_at", ""))
        if extracted_at > newest_at:
            newest, newest_at = os.path.dirname(path), extracted_at
    return newest


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", required=True)
    parser.add_argument("--texts", required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out")
    where.add_argument("--latest-under")
    parser.add_argument("--checkpoint")
    parser.add_argument("--datapath")
    parser.add_argument("--file", action="append", default=[], metavar="NAME=RELATIVE_PATH")
    parser.add_argument("--require-complete", action="append", default=[], choices=sorted(LINE_PER),
                        help="exit 3 unless this file has one complete line per image / text")
    return parser.parse_args(argv)


# Each output file has one line per image or per text: features, and the predictions of KNN
# (text→image: one line per text query; image→text: one per image).
LINE_PER = {"image_feats": "image", "text_feats": "text", "t2i_predictions": "text", "i2t_predictions": "image"}
DESCRIBED = {"image_feats": "image feature file", "text_feats": "text feature file",
             "t2i_predictions": "text→image prediction file", "i2t_predictions": "image→text prediction file"}


def incomplete(facts, names):
    """Why the files NAMES are not complete, or None."""
    counts = {"image": facts["images"]["count"], "text": facts["texts"]["count"]}
    for name in names:
        found, kind = facts["files"].get(name), LINE_PER[name]
        if found is None:
            return f"the {DESCRIBED[name]} is missing"
        if found["partial_last_line"] or found["lines"] != counts[kind]:
            return f"the {DESCRIBED[name]} has {found['lines']} complete lines for {counts[kind]} {kind}s"
    return None


def main(argv):
    args = parse_args(argv)
    out_dir = args.out or latest_output_dir(args.latest_under, args.datapath)
    num_images, images_problem = count_images(args.images)
    facts = {
        "images": {"path": args.images, "count": num_images, "problem": images_problem},
        "texts": {"path": args.texts, "count": count_texts(args.texts)},
        # what the features are made of besides the checkpoint: rewritten in place with the same
        # counts (new texts, re-encoded images), features made before are of other inputs
        "dataset_files": {"images": stat_of(os.path.join(args.images, "data.mdb")), "texts": stat_of(args.texts)},
        "checkpoint": None,
        "out_dir": out_dir,
        "manifest": None,
        "manifest_problem": None,
        "files": {},
    }
    if args.checkpoint:
        facts["checkpoint"] = dict(stat_of(args.checkpoint) or {}, path=args.checkpoint, inode=inode_of(args.checkpoint),
                                   exists=os.path.isfile(args.checkpoint),
                                   readable=os.access(args.checkpoint, os.R_OK))
    if out_dir:
        facts["manifest"], facts["manifest_problem"] = read_manifest(out_dir)
        for spec in args.file:
            name, _, relative = spec.partition("=")
            facts["files"][name] = describe_file(os.path.join(out_dir, relative))
    sys.stdout.write(MARKER + json.dumps(facts, ensure_ascii=False) + "\n")
    if args.require_complete:
        problem = incomplete(facts, args.require_complete)
        if problem:
            sys.stderr.write(f"the step before exited 0 but {problem} (is the disk full?)\n")
            sys.exit(3)
        print(f"complete: {' and '.join(DESCRIBED[name] for name in args.require_complete)} "
              f"({facts['images']['count']} images, {facts['texts']['count']} texts)")


if __name__ == "__main__":
    main(sys.argv[1:])
