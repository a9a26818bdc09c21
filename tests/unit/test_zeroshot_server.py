"""remote/zeroshot.py's preflight on real folders: each trap upstream falls into is refused in
one sentence naming the file, with its fix; a dataset laid out as upstream's passes."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from evalkit.remote.zeroshot import dataset_checks, listing_digest, refusal, template_set, templates_check


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _dataset(root: Path, classes: int = 12, labels: int | None = None, padded: bool = True) -> tuple[str, str, str]:
    test = root / "test"
    for index in range(classes):
        folder = test / (f"{index:03d}" if padded else str(index))
        folder.mkdir(parents=True)
        (folder / "a.jpg").write_bytes(_jpeg())
    (root / "label_cn.txt").write_text("".join(f"类{k}\n" for k in range(classes if labels is None else labels)),
                                       encoding="utf-8")
    checkpoint = root / "epoch_latest.pt"
    checkpoint.write_bytes(b"x")
    return str(test), str(root / "label_cn.txt"), str(checkpoint)


def test_upstream_s_layout_passes(tmp_path):
    assert refusal(*_dataset(tmp_path)) is None


def test_a_label_file_one_line_short_is_refused(tmp_path):
    test, labels, checkpoint = _dataset(tmp_path, labels=11)
    assert refusal(test, labels, checkpoint) == (
        f"{labels} has 11 class names but {test} has 12 class folders",
        "write one line per class folder, line k naming the k-th folder in sorted order")


def test_a_blank_line_is_refused_not_made_a_class(tmp_path):
    test, labels, checkpoint = _dataset(tmp_path)
    Path(labels).write_text("".join(f"类{k}\n" for k in range(11)) + "\n", encoding="utf-8")
    assert refusal(test, labels, checkpoint)[0] == \
        f"{labels} line 12 is blank, which upstream reads as a class with an empty name"


def test_an_empty_class_folder_is_refused(tmp_path):
    test, labels, checkpoint = _dataset(tmp_path)
    (Path(test) / "007" / "a.jpg").unlink()
    message, fix = refusal(test, labels, checkpoint)
    assert message.startswith(f"the class folder {test}/007 has no image ImageFolder reads")
    assert fix == "add its images, or remove the folder and its line in label_cn.txt"


def test_ids_not_zero_padded_past_10_classes_are_refused(tmp_path):
    message, fix = refusal(*_dataset(tmp_path, padded=False))
    assert "do not sort in numeric order (0, 1, 10, 11 …)" in message and "zero-pad" in fix


def test_an_unreadable_image_is_refused(tmp_path):
    test, labels, checkpoint = _dataset(tmp_path)
    (Path(test) / "003" / "b.jpg").write_bytes(b"not a jpeg")
    assert refusal(test, labels, checkpoint)[0].startswith(f"{test}/003/b.jpg cannot be read as an image")


def test_a_missing_checkpoint_is_refused_first(tmp_path):
    test, labels, _ = _dataset(tmp_path)
    assert refusal(test, labels, str(tmp_path / "none.pt"))[0] == f"the checkpoint {tmp_path}/none.pt does not exist"


def test_two_listings_pair_only_when_labels_and_images_are_the_same(tmp_path):
    test, labels, _ = _dataset(tmp_path / "a")
    digest, images, classes = listing_digest(test, labels)
    assert (images, classes) == (12, 12) and listing_digest(*_dataset(tmp_path / "b")[:2])[0] == digest
    Path(labels).write_text(Path(labels).read_text(encoding="utf-8").replace("类0", "猫"), encoding="utf-8")
    assert listing_digest(test, labels)[0] != digest


@pytest.mark.parametrize("name, templates", [("food-101", "food_templates"), ("resisc45_clip", "eurosat_templates"),
                                             ("country211", "country211_templates"), ("cifar-100", "openai_templates")])
def test_templates_are_chosen_by_the_folder_name_as_upstream_chooses(name, templates):
    assert template_set(name) == templates


def _checks(test: str, labels: str) -> dict:
    return {check["name"]: check for check in dataset_checks(test, labels)}


def test_the_doctor_gets_every_check_of_a_good_dataset_passed_with_what_it_saw(tmp_path):
    test, labels, _ = _dataset(tmp_path)
    assert {name: (check["ok"], check["found"]) for name, check in _checks(test, labels).items()} == {
        "label file": (True, f"{labels}: 12 lines of UTF-8 text"),
        "blank lines": (True, "no blank line in label_cn.txt"),
        "class names": (True, "12 class names for 12 class folders"),
        "folder order": (True, "the numbered class folders sort in numeric order (zero-padded)"),
        "empty class folders": (True, "every class folder has images"),
        "images": (True, "all 12 images can be read")}


def test_the_doctor_gets_each_problem_where_the_preflight_stops_at_the_first(tmp_path):
    test, labels, checkpoint = _dataset(tmp_path, labels=11, padded=False)
    (Path(test) / "5" / "a.jpg").unlink()
    failed = [name for name, check in _checks(test, labels).items() if not check["ok"]]
    assert failed == ["class names", "folder order", "empty class folders"]
    assert refusal(test, labels, checkpoint) == (_checks(test, labels)["class names"]["found"],
                                                 _checks(test, labels)["class names"]["fix"])


def test_without_the_label_file_nothing_else_is_checked(tmp_path):
    test, labels, _ = _dataset(tmp_path)
    Path(labels).unlink()
    assert [(c["name"], c["found"]) for c in dataset_checks(test, labels)] == [("label file", f"{labels} does not exist")]


@pytest.mark.parametrize("name, said", [("food-101", "food-101: food_templates ("),
                                        ("cifar-100", "cifar-100: openai_templates (")])
def test_the_doctor_names_the_template_set_upstream_will_use(name, said):
    check = templates_check(name)
    assert check["ok"] and check["found"].startswith(said)


def test_check_and_provenance_take_the_server_options_from_one_declaration(monkeypatch):
    """zeroshot.py check and provenance.py run side by side on the server (zeroshot imports it)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "evalkit" / "remote"))
    import provenance
    import zeroshot
    common = ["--chinese-clip-dir", "/srv/Chinese-CLIP", "--cache", "/srv/.evalkit/hashes.json"]
    checked = zeroshot.parse_args(["check", "--images", "d/test", "--label-file", "d/label_cn.txt",
                                   "--checkpoint", "c.pt", *common, "--gpu", "1"])
    traced = provenance.parse_args(["--checkpoint", "c.pt", "--images", "i", "--texts", "t", *common, "--cpu"])
    assert (checked.chinese_clip_dir, checked.cache, checked.gpu, checked.cpu) == \
        ("/srv/Chinese-CLIP", "/srv/.evalkit/hashes.json", "1", False)
    assert (traced.chinese_clip_dir, traced.gpu, traced.cpu) == ("/srv/Chinese-CLIP", None, True)
    with pytest.raises(SystemExit):  # --gpu and --cpu exclude each other in both
        zeroshot.parse_args(["check", "--images", "d", "--label-file", "l", "--checkpoint", "c", *common,
                             "--gpu", "0", "--cpu"])
