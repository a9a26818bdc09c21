"""Write a tiny Chinese-CLIP retrieval dataset (TSV + JSONL + LMDB).

Runs with the *server* venv's python (needs Pillow and cn_clip), e.g.::

    python make_dataset.py --datapath D --dataset toy --split valid

and produces, in the layout the upstream evaluation scripts expect::

    D/datasets/toy/valid_imgs.tsv      image_id<TAB>urlsafe-base64 JPEG
    D/datasets/toy/valid_texts.jsonl   {"text_id", "text", "image_ids"}
    D/datasets/toy/lmdb/valid/{imgs,pairs}

Everything is a pure function of the arguments, so two runs with the same
seed give byte-identical TSV/JSONL files.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
# The upstream evaluation hard-codes top-10 recall, so fewer breaks it.
MIN_IMAGES = 10
MIN_TEXTS = 10
TWO_IMAGE_EVERY = 7  # every 7th text names two images, as real captions sometimes do

COLOURS = ["红色", "蓝色", "绿色", "黄色", "白色", "黑色", "紫色", "橙色"]
THINGS = ["猫", "狗", "汽车", "自行车", "花", "房子", "小鸟", "苹果", "杯子", "风筝"]
PLACES = ["草地上", "桌子上", "街道上", "公园里", "海边", "雪地里", "窗台上", "山顶上"]
COUNTS = ["一只", "两个", "一辆", "几朵", "一座", "三个"]
TAILS = ["", "，阳光明媚", "，画面很清晰", "，背景是蓝天", "，旁边有人"]


def make_image(rng: random.Random) -> bytes:
    """A 64x64 JPEG: random background plus a few random filled shapes."""
    def colour() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colour())
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 5)):
        x0, y0 = rng.randrange(IMAGE_SIZE - 8), rng.randrange(IMAGE_SIZE - 8)
        box = (x0, y0, rng.randrange(x0 + 8, IMAGE_SIZE + 1), rng.randrange(y0 + 8, IMAGE_SIZE + 1))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape(box, fill=colour())
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_text(rng: random.Random) -> str:
    """A short Chinese caption, e.g. "一只红色的猫在草地上，阳光明媚"."""
    return (f"{rng.choice(COUNTS)}{rng.choice(COLOURS)}的{rng.choice(THINGS)}"
            f"在{rng.choice(PLACES)}{rng.choice(TAILS)}")


def write_images(path: Path, ids: list[int], seed: int) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for image_id in ids:
            # One RNG per image: an image does not change when --images grows.
            jpeg = make_image(random.Random(f"{seed}-img-{image_id}"))
            out.write(f"{image_id}\t{base64.urlsafe_b64encode(jpeg).decode('ascii')}\n")


def write_texts(path: Path, ids: list[int], per_image: int, first_text_id: int, seed: int) -> int:
    """Write ``per_image`` captions per image; return how many were written."""
    rng = random.Random(f"{seed}-texts")
    text_id = first_text_id
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for pos, image_id in enumerate(ids):
            for _ in range(per_image):
                image_ids = [image_id]
                if (text_id - first_text_id) % TWO_IMAGE_EVERY == TWO_IMAGE_EVERY - 1:
                    image_ids.append(ids[(pos + 1) % len(ids)])
                obj = {"text_id": text_id, "text": make_text(rng), "image_ids": image_ids}
                out.write(json.dumps(obj, ensure_ascii=False) + "\n")
                text_id += 1
    return text_id - first_text_id


def build_lmdb(data_dir: Path, split: str) -> None:
    """Run cn_clip's own LMDB builder, so the files are exactly what upstream reads."""
    # The builder appends to an existing LMDB; start clean so stale keys can't survive.
    shutil.rmtree(data_dir / "lmdb" / split, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "cn_clip.preprocess.build_lmdb_dataset",
         "--data_dir", str(data_dir), "--splits", split],
        check=True, stdout=sys.stderr,  # keep our stdout for the summary line
    )


def build_dataset(datapath: Path, dataset: str, split: str, *, images: int = 20,
                  texts_per_image: int = 4, first_image_id: int = 1000,
                  first_text_id: int = 1, seed: int = 0) -> Path:
    """Write the TSV, JSONL and LMDB for one split; return the dataset dir.

    Raises ValueError if the sizes are below what top-10 evaluation needs.
    """
    if images < MIN_IMAGES or images * texts_per_image < MIN_TEXTS:
        raise ValueError(f"need >= {MIN_IMAGES} images and >= {MIN_TEXTS} texts")
    data_dir = Path(datapath) / "datasets" / dataset
    data_dir.mkdir(parents=True, exist_ok=True)
    ids = list(range(first_image_id, first_image_id + images))
    write_images(data_dir / f"{split}_imgs.tsv", ids, seed)
    write_texts(data_dir / f"{split}_texts.jsonl", ids, texts_per_image, first_text_id, seed)
    build_lmdb(data_dir, split)
    return data_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datapath", type=Path, required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--texts-per-image", type=int, default=4)
    p.add_argument("--first-image-id", type=int, default=1000)
    p.add_argument("--first-text-id", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    data_dir = build_dataset(a.datapath, a.dataset, a.split, images=a.images,
                             texts_per_image=a.texts_per_image, first_image_id=a.first_image_id,
                             first_text_id=a.first_text_id, seed=a.seed)
    print(data_dir)


if __name__ == "__main__":
    main()
