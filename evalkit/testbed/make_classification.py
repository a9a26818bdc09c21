"""Write a tiny zero-shot classification dataset in Chinese-CLIP's layout.

Runs with the *server* venv's python (needs Pillow), e.g.::

    python make_classification.py --datapath D --dataset cifar-mini --classes 12

and produces what upstream's zeroshot_eval.sh reads (ELEVATER and ImageNet come this way)::

    D/datasets/cifar-mini/label_cn.txt       class k's Chinese name on line k (k from 0)
    D/datasets/cifar-mini/test/000/*.jpg     the images of class 0 ...
    D/datasets/cifar-mini/test/011/*.jpg     ... ids zero-padded to 3 digits past 10 classes,
                                             so ImageFolder's sorted folders are the label order

Classes have different sizes (2, 3, 4 images, ...), so mean per-class recall differs from top-1.
Everything is a pure function of the arguments: two runs with the same seed give identical files.
"""
from __future__ import annotations

import argparse
import io
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
CLASS_NAMES = ["猫", "狗", "汽车", "自行车", "花", "房子", "小鸟", "苹果", "杯子", "风筝", "飞机", "轮船",
               "马", "青蛙", "卡车", "鹿", "树", "山", "椅子", "钟表"]


def folder_name(index: int, classes: int) -> str:
    """Upstream's class folder: the index, zero-padded to 3 digits once there are more than 10 classes."""
    return f"{index:03d}" if classes > 10 else str(index)


def make_image(rng: random.Random, tint: tuple[int, int, int]) -> bytes:
    """A 64x64 JPEG: a background near the class's tint plus a few random shapes."""
    background = tuple(max(0, min(255, c + rng.randrange(-40, 41))) for c in tint)
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 4)):
        x0, y0 = rng.randrange(IMAGE_SIZE - 8), rng.randrange(IMAGE_SIZE - 8)
        box = (x0, y0, rng.randrange(x0 + 8, IMAGE_SIZE + 1), rng.randrange(y0 + 8, IMAGE_SIZE + 1))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_classification(datapath: Path, dataset: str, *, classes: int = 12, seed: int = 0) -> Path:
    """Write label_cn.txt and test/<id>/ for CLASSES classes; return the dataset dir."""
    if not 2 <= classes <= len(CLASS_NAMES):
        raise ValueError(f"classes must be 2..{len(CLASS_NAMES)}")
    data_dir = Path(datapath) / "datasets" / dataset
    shutil.rmtree(data_dir / "test", ignore_errors=True)
    (data_dir / "test").mkdir(parents=True)
    (data_dir / "label_cn.txt").write_text("".join(f"{name}\n" for name in CLASS_NAMES[:classes]), encoding="utf-8")
    for index in range(classes):
        rng = random.Random(f"{seed}-class-{index}")
        tint = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        folder = data_dir / "test" / folder_name(index, classes)
        folder.mkdir()
        for number in range(2 + index % 3):
            (folder / f"{dataset}_{index}_{number:05d}.jpg").write_bytes(make_image(rng, tint))
    return data_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datapath", type=Path, required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--classes", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(build_classification(a.datapath, a.dataset, classes=a.classes, seed=a.seed))


if __name__ == "__main__":
    main()
