"""`python -m evalkit doctor` against the real test bed: a healthy server passes every check,
and each deliberately broken piece is pinpointed by its own ✗ line, with a fix and exit 16.

Tests that damage data work on a fresh copy of the dataset under tmp_path: the session's
datapath is shared with the other integration tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from evalkit.architecture import infer_architecture
from evalkit.config import TEXT_MODELS, VISION_MODELS
from evalkit.errors import DoctorFailed

from .conftest import texts_of

pytestmark = pytest.mark.integration

EVERY_CHECK = ["ssh alias", "server reachable", "host key", "authentication", "activate", "python",
               "torch", "cn_clip", "GPU", "images", "texts", "image ids", "checkpoint", "architecture",
               "disk"]


def doctor(bed, *args: str, model_path: str | Path | None = None) -> subprocess.CompletedProcess:
    """The command exactly as a user types it, with --config pointing at the test bed."""
    model = ["--model-path", str(model_path or bed.checkpoint)]
    command = [sys.executable, "-m", "evalkit", "doctor", "--config", str(bed.config), *model, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          cwd=bed.results_dir.parent, stdin=subprocess.DEVNULL,
                          env={**os.environ, "COLUMNS": "300"})


def checks(run: subprocess.CompletedProcess) -> dict[str, tuple[str, str]]:
    """{check name: (✓ or ✗, what it found)}, in the order printed."""
    found = {}
    for line in run.stdout.splitlines():
        if line[:2] in ("✓ ", "✗ "):
            name, _, text = line[2:].partition(": ")
            found[name] = (line[0], text)
    return found


def assert_pinpointed(run: subprocess.CompletedProcess, name: str, *phrases: str) -> None:
    """Exit 16, the named check is the only ✗, it says PHRASES and a fix; no traceback."""
    assert run.returncode == DoctorFailed.exit_code, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    lines = checks(run)
    assert [n for n, (mark, _) in lines.items() if mark == "✗"] == [name], run.stdout
    for phrase in phrases:
        assert phrase in lines[name][1], run.stdout
    after = run.stdout.split(f"✗ {name}: ", 1)[1].splitlines()
    assert after[1].startswith("  fix: "), run.stdout
    assert run.stderr.startswith(f"error: 1 of {len(lines)} checks failed: {name}")


# --- a healthy server --------------------------------------------------------------------------

def test_a_healthy_test_bed_passes_every_check(testbed):
    run = doctor(testbed)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = checks(run)
    assert list(lines) == EVERY_CHECK
    assert all(mark == "✓" for mark, _ in lines.values()), run.stdout
    assert lines["images"][1].endswith("lmdb/valid/imgs: 20 images (num_images)")
    assert lines["texts"][1].endswith("valid_texts.jsonl: 80 texts, each with text_id, text and image_ids")
    assert lines["image ids"][1] == "all 20 image ids the texts name are in the LMDB"
    assert lines["architecture"][1] == "RN50 + RBT3-chinese, as --vision-model and --text-model say"
    assert run.stdout.splitlines()[-1] == f"all {len(EVERY_CHECK)} checks passed"
    assert run.stderr == ""


def test_the_doctor_never_touches_the_dataset_or_the_checkpoint(testbed):
    watched = [texts_of(testbed.datapath), testbed.checkpoint,
               *(testbed.datapath / "datasets" / "Flickr30k-CN" / "lmdb" / "valid" / "imgs").iterdir()]
    before = {path: path.stat().st_mtime_ns for path in watched}
    assert doctor(testbed).returncode == 0
    assert {path: path.stat().st_mtime_ns for path in watched} == before


# --- ssh ----------------------------------------------------------------------------------------

def test_an_unreachable_port_stops_at_the_connection(testbed):
    closed = testbed.point_at_a_closed_port()
    run = doctor(testbed)
    assert_pinpointed(run, "server reachable", f"127.0.0.1:{closed}")
    assert list(checks(run)) == ["ssh alias", "server reachable"]  # nothing else can be checked


def test_an_unknown_host_key_is_pinpointed_with_its_fingerprint(testbed):
    (testbed.ssh_dir / "known_hosts").write_text("")
    run = doctor(testbed)
    assert_pinpointed(run, "host key", "not in known_hosts", "SHA256:")
    assert list(checks(run)) == ["ssh alias", "server reachable", "host key"]


# --- the environment ----------------------------------------------------------------------------

@pytest.mark.parametrize("activate,phrase", [
    ("false", "exited with status 1"),
    ("source '/nonexistent/conda/bin/activate'", "/nonexistent/conda/bin/activate"),
])
def test_a_failing_activate_command_is_pinpointed(testbed, activate, phrase):
    testbed.write_config(activate=activate)
    run = doctor(testbed)
    assert_pinpointed(run, "activate", phrase)
    assert list(checks(run))[-1] == "activate"  # without the env, nothing else can run


def test_a_wrong_chinese_clip_dir_is_pinpointed(testbed, tmp_path):
    testbed.write_config(chinese_clip_dir=str(tmp_path / "no Chinese-CLIP here"))
    assert_pinpointed(doctor(testbed), "cn_clip", f"{tmp_path / 'no Chinese-CLIP here'} does not exist")


# --- the dataset --------------------------------------------------------------------------------

def test_a_missing_split_is_pinpointed_for_images_and_texts(testbed):
    run = doctor(testbed, "--split", "test")  # the test bed has only Flickr30k-CN's valid split
    assert run.returncode == DoctorFailed.exit_code
    lines = checks(run)
    assert [name for name, (mark, _) in lines.items() if mark == "✗"] == ["images", "texts"]
    assert "split 'test' of dataset 'Flickr30k-CN' has no image LMDB" in lines["images"][1]
    assert "has no texts file" in lines["texts"][1] and "test_texts.jsonl" in lines["texts"][1]
    assert "image ids" not in lines


def test_a_texts_line_that_is_not_json_is_pinpointed_by_its_number(testbed, own_datapath):
    with texts_of(own_datapath).open("a", encoding="utf-8") as texts:
        texts.write('{"text_id": 999, "text": "半行\n')
    assert_pinpointed(doctor(testbed), "texts", "1 of the 81 lines", "line 81 is not JSON")


def test_an_empty_texts_file_is_pinpointed(testbed, own_datapath):
    texts_of(own_datapath).write_text("")
    assert_pinpointed(doctor(testbed), "texts", "is empty")


def test_a_text_naming_an_image_not_in_the_lmdb_is_pinpointed(testbed, own_datapath):
    with texts_of(own_datapath).open("a", encoding="utf-8") as texts:
        texts.write(json.dumps({"text_id": 999, "text": "一只猫", "image_ids": [999999]}) + "\n")
    assert_pinpointed(doctor(testbed), "image ids", "1 of the 21 image ids", "999999 (line 81)")


# --- the checkpoint -----------------------------------------------------------------------------

def test_a_missing_checkpoint_is_pinpointed(testbed, tmp_path):
    missing = tmp_path / "experiments" / "nope" / "checkpoints" / "epoch_latest.pt"
    assert_pinpointed(doctor(testbed, model_path=missing), "checkpoint",
                      f"checkpoint not found on the server: {missing}")


@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint", "a tensor's data left out"])
def test_a_damaged_checkpoint_cannot_be_loaded(testbed, tmp_path, damage):
    broken = tmp_path / "broken.pt"
    data = testbed.checkpoint.read_bytes()
    if damage == "a tensor's data left out":
        _copy_leaving_out_one_tensor(testbed.checkpoint, broken)
    else:
        broken.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a checkpoint")
    assert_pinpointed(doctor(testbed, model_path=broken), "checkpoint",
                      f"checkpoint {broken}", "cannot be loaded:", "(truncated or not a checkpoint?)")


def _copy_leaving_out_one_tensor(checkpoint: Path, copy: Path) -> None:
    with zipfile.ZipFile(checkpoint) as source, zipfile.ZipFile(copy, "w") as target:
        left_out = next(name for name in source.namelist() if "/data/" in name)
        for info in source.infolist():
            if info.filename != left_out:
                target.writestr(info, source.read(info))


READ_BOTH_WAYS = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import doctor_probe
path = sys.argv[2]
loaded = doctor_probe.load_checkpoint(torch, path)
print(json.dumps({"torch.load": doctor_probe.state_dict_facts(lambda v: isinstance(v, torch.Tensor), loaded),
                  "probe": doctor_probe.checkpoint_facts(path)}))
"""

WITHOUT_TORCH = """
import json, sys
sys.modules["torch"] = None  # any import of torch now fails
sys.path.insert(0, sys.argv[1])
import doctor_probe
print(json.dumps(doctor_probe.checkpoint_facts(sys.argv[2])))
"""


def _probe_script(server_python: Path, script: str, checkpoint: Path) -> dict:
    remote_dir = Path(__file__).resolve().parents[2] / "evalkit" / "remote"
    done = subprocess.run([str(server_python), "-c", script, str(remote_dir), str(checkpoint)],
                          capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout)


def test_the_probe_reads_the_checkpoints_shapes_exactly_as_torch_load_does(server_python, checkpoint):
    facts = _probe_script(server_python, READ_BOTH_WAYS, checkpoint)
    assert len(facts["torch.load"]["shapes"]) > 300
    assert {key: facts["probe"][key] for key in ("keys", "shapes")} == facts["torch.load"]


def test_a_training_checkpoint_is_checked_without_importing_torch(server_python, checkpoint):
    # importing torch takes seconds on a CUDA server: the preflight of every first run pays it
    facts = _probe_script(server_python, WITHOUT_TORCH, checkpoint)
    assert "load_error" not in facts and len(facts["shapes"]) > 300


def test_an_old_format_checkpoint_is_still_read_through_torch(server_python, tmp_path):
    legacy = tmp_path / "legacy.pt"
    subprocess.run([str(server_python), "-c", "import sys, torch; torch.save({'state_dict': "
                    "torch.nn.Linear(4, 3).state_dict()}, sys.argv[1], _use_new_zipfile_serialization=False)",
                    str(legacy)], check=True, timeout=300)
    facts = _probe_script(server_python, READ_BOTH_WAYS, legacy)
    assert facts["probe"]["shapes"] == facts["torch.load"]["shapes"] == {"weight": [3, 4], "bias": [3]}


def test_the_wrong_architecture_is_pinpointed_with_the_right_flags(testbed):
    run = doctor(testbed, "--vision-model", "ViT-B-16")
    assert_pinpointed(run, "architecture",
                      "checkpoint looks like RN50 + RBT3-chinese, but --vision-model ViT-B-16 was given")
    assert "  fix: pass --vision-model RN50 --text-model RBT3-chinese" in run.stdout


# --- the inference against upstream's real models ------------------------------------------------

REAL_SHAPES = """
import itertools, json, sys, torch
from cn_clip.clip.model import CLIP
sys.path.insert(0, sys.argv[1])
from make_checkpoint import model_info
shapes = {}
for vision, text in itertools.product(json.loads(sys.argv[2]), json.loads(sys.argv[3])):
    with torch.device("meta"):  # shapes only: no memory, even for ViT-H-14
        model = CLIP(**model_info(vision, text))
    shapes[vision + "|" + text] = {"module." + k: list(v.shape) for k, v in model.state_dict().items()}
print(json.dumps(shapes))
"""


def test_every_upstream_model_is_recognised_from_its_real_state_dict(server_python):
    import evalkit.testbed
    done = subprocess.run([str(server_python), "-c", REAL_SHAPES, str(Path(evalkit.testbed.__file__).parent),
                           json.dumps(VISION_MODELS), json.dumps(TEXT_MODELS)],
                          capture_output=True, text=True, timeout=300, check=True)
    for pair, shapes in json.loads(done.stdout).items():
        architecture = infer_architecture(shapes)
        assert f"{architecture.vision}|{architecture.text}" == pair


# --- a zero-shot classification dataset ---------------------------------------------------------

CLASSIFICATION_CHECKS = ["label file", "blank lines", "class names", "folder order",
                         "empty class folders", "images", "templates"]


@pytest.fixture
def classification_datapath(testbed, server_python, tmp_path) -> Path:
    """A 12-class dataset in upstream's layout (label_cn.txt, test/000 … test/011) of its own,
    named country211 so that upstream picks a template set by name; the config points at it."""
    from evalkit.testbed.builders import build_classification_dataset
    root = tmp_path / "数据 classification"
    build_classification_dataset(server_python, root, "country211", classes=12)
    testbed.write_config(datapath=str(root))
    return root / "datasets" / "country211"


def test_a_good_classification_dataset_passes_each_of_its_checks(testbed, classification_datapath):
    run = doctor(testbed, "--dataset-name", "country211")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = checks(run)
    # the task is looked at over SFTP as soon as the login works, the dataset's checks come in the images' place
    assert list(lines) == (EVERY_CHECK[:4] + ["task"] + EVERY_CHECK[4:9] + CLASSIFICATION_CHECKS
                           + ["checkpoint", "architecture", "disk"])
    assert all(mark == "✓" for mark, _ in lines.values()), run.stdout
    assert lines["task"][1] == ("country211: zero-shot image classification (label_cn.txt + test/ class folders), "
                                "split test (there is no valid/ folder)")
    assert lines["class names"][1] == "12 class names for 12 class folders"
    assert lines["images"][1] == "all 36 images can be read"
    assert lines["templates"][1].startswith("country211: country211_templates (4 templates)")


def test_a_broken_classification_dataset_gets_a_cross_and_a_fix_for_each_problem(testbed, classification_datapath):
    labels = classification_datapath / "label_cn.txt"
    labels.write_text("\n".join(labels.read_text(encoding="utf-8").splitlines()[:11]) + "\n\n", encoding="utf-8")
    for image in (classification_datapath / "test" / "007").iterdir():
        image.unlink()
    run = doctor(testbed, "--dataset-name", "country211")
    assert run.returncode == DoctorFailed.exit_code, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    lines = checks(run)
    failed = [name for name, (mark, _) in lines.items() if mark == "✗"]
    assert failed == ["blank lines", "empty class folders"], run.stdout
    assert lines["blank lines"][1] == f"{labels} line 12 is blank, which upstream reads as a class with an empty name"
    assert lines["empty class folders"][1].startswith(
        f"the class folder {classification_datapath}/test/007 has no image ImageFolder reads")
    for name in failed:
        assert run.stdout.split(f"✗ {name}: ", 1)[1].splitlines()[1].startswith("  fix: "), run.stdout
    assert run.stderr.startswith(f"error: 2 of {len(lines)} checks failed: blank lines, empty class folders")
