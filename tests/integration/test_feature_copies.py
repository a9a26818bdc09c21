"""The KNN step and image→image share one parse of a feature file: the first to read it leaves a
hidden float32 copy beside it, valid only for the file's size and mtime.

Runs evalkit/remote/fast_knn.py with the test bed's server python (numpy + torch).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REMOTE = Path(__file__).resolve().parents[2] / "evalkit" / "remote"
FAST_KNN = REMOTE / "fast_knn.py"

IMAGES = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
TEXTS = [[1.0, 0.1], [0.1, 1.0]]


def write_features(path: Path, id_key: str, vectors: list[list[float]]) -> None:
    path.write_text("".join(json.dumps({id_key: 100 + index, "feature": vector}) + "\n"
                            for index, vector in enumerate(vectors)))


@pytest.fixture
def features(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    images, texts = folder / "valid_imgs.img_feat.jsonl", folder / "valid_texts.txt_feat.jsonl"
    write_features(images, "image_id", IMAGES)
    write_features(texts, "text_id", TEXTS)
    return images, texts


def top_images(server_python, images: Path, texts: Path, output: Path) -> list[list[int]]:
    done = subprocess.run([server_python, str(FAST_KNN), "--image-feats", str(images), "--text-feats",
                           str(texts), "--top-k", "3", "--t2i-output", str(output)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["image_ids"] for line in output.read_text().splitlines()]


def copies_of(path: Path) -> tuple[Path, Path]:
    base = path.parent / f".{path.name}.evalkit-float32"
    return Path(f"{base}.npy"), Path(f"{base}.json")


def test_the_first_read_leaves_a_copy_and_the_next_reads_it_instead_of_parsing(
        server_python, features, tmp_path):
    images, texts = features
    first = top_images(server_python, images, texts, tmp_path / "first.jsonl")
    assert first == [[100, 102, 101], [101, 102, 100]]
    matrix, meta = copies_of(images)
    stat = images.stat()
    assert json.loads(meta.read_text())["source"] == [stat.st_size, stat.st_mtime_ns]
    assert json.loads(meta.read_text())["ids"] == [100, 101, 102]
    # Proof that the copy, not the JSON, is read: swap the copy's first two image vectors.
    subprocess.run([server_python, "-c", "import numpy, sys; m = numpy.load(sys.argv[1]); "
                    "numpy.save(sys.argv[1], m[[1, 0, 2]])", str(matrix)], check=True)
    assert top_images(server_python, images, texts, tmp_path / "second.jsonl") == [
        [101, 102, 100], [100, 102, 101]]


def test_a_copy_of_another_version_of_the_file_is_ignored_and_replaced(server_python, features,
                                                                      tmp_path):
    images, texts = features
    top_images(server_python, images, texts, tmp_path / "before.jsonl")
    write_features(images, "image_id", list(reversed(IMAGES)))  # re-extracted: new content
    os.utime(images, ns=(images.stat().st_atime_ns, images.stat().st_mtime_ns + 10**9))
    assert top_images(server_python, images, texts, tmp_path / "after.jsonl") == [
        [102, 100, 101], [101, 100, 102]]
    stat = images.stat()
    assert json.loads(copies_of(images)[1].read_text())["source"] == [stat.st_size, stat.st_mtime_ns]


def test_a_damaged_copy_is_parsed_around_and_one_that_cannot_be_written_costs_nothing(
        server_python, features, tmp_path):
    images, texts = features
    top_images(server_python, images, texts, tmp_path / "first.jsonl")
    copies_of(images)[0].write_bytes(b"not a numpy file")
    assert top_images(server_python, images, texts, tmp_path / "damaged.jsonl") == [
        [100, 102, 101], [101, 102, 100]]
    for path in copies_of(images) + copies_of(texts):
        path.unlink()
    copies_of(images)[1].mkdir()  # the copy's stamp cannot be written
    assert top_images(server_python, images, texts, tmp_path / "unwritable.jsonl") == [
        [100, 102, 101], [101, 102, 100]]
    assert not [path.name for path in images.parent.iterdir() if ".tmp-" in path.name]
