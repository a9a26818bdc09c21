"""Zero-shot classification, the pure parts: the task and split from a dataset folder's layout,
the plan, the preflight's answer, the comparison's columns, CLIP_benchmark's keys, the tests."""
from __future__ import annotations

import json
import shlex

import pytest

from evalkit.comparison import ModelResult, build_comparison, clip_benchmark_metrics, to_csv, to_markdown
from evalkit.config import Settings
from evalkit.errors import MissingInput
from evalkit.evaluation import CLASSIFICATION, Evaluation, Scope
from evalkit.plan import build_plan
from evalkit.significance import parse_query_hits, significance
from evalkit.zeroshot import Layout, refusal, scoped, scoped_all

CHECKPOINT = "/root/autodl-tmp/datapath/experiments/exp/checkpoints/epoch_latest.pt"


@pytest.mark.parametrize("layout, split, asked, note", [
    (Layout("cifar-100", True, ("test",)), "test", "valid",
     "cifar-100: zero-shot image classification (label_cn.txt + test/ class folders), split test "
     "(there is no valid/ folder)"),
    (Layout("cifar-100", True, ("valid", "test")), "valid", "valid",
     "cifar-100: zero-shot image classification (label_cn.txt + valid/ class folders), split valid"),
    (Layout("cifar-100", True, ("test",)), "test", "test",
     "cifar-100: zero-shot image classification (label_cn.txt + test/ class folders), split test"),
])
def test_a_label_file_makes_a_classification_dataset_and_says_which_split(layout, split, asked, note):
    scope, said = scoped(Scope("cifar-100", asked), layout)
    assert (scope.task, scope.split, said) == (CLASSIFICATION, split, note)


def test_a_folder_without_label_file_stays_retrieval_and_says_nothing():
    scope = Scope("Flickr30k-CN", "valid")
    assert scoped(scope, Layout("Flickr30k-CN", False)) == (scope, None)


def test_a_label_file_without_image_folder_is_refused_with_the_layout_to_make():
    with pytest.raises(MissingInput) as refused:
        scoped(Scope("cifar-100", "valid"), Layout("cifar-100", True, ()))
    assert refused.value.message == "cifar-100 has label_cn.txt but no valid/ or test/ folder of class folders"
    assert "test/<class id>/" in refused.value.hint


def test_quick_steps_refuse_a_classification_dataset():
    with pytest.raises(MissingInput, match="evaluated in one step"):
        scoped(Scope("cifar-100", "valid", stages=("knn",)), Layout("cifar-100", True, ("test",)))


def test_a_matrix_keeps_retrieval_and_classification_cells_and_valid_and_test_become_one():
    scopes = [Scope(d, s) for d in ("Flickr30k-CN", "cifar-100") for s in ("valid", "test")]
    layouts = {"Flickr30k-CN": Layout("Flickr30k-CN", False), "cifar-100": Layout("cifar-100", True, ("test",))}
    found, notes = scoped_all(scopes, layouts)
    assert [(s.dataset, s.split, s.task) for s in found] == [
        ("Flickr30k-CN", "valid", "retrieval"), ("Flickr30k-CN", "test", "retrieval"),
        ("cifar-100", "test", CLASSIFICATION)]
    assert len(notes) == 1


def test_nothing_large_crosses_the_network_the_top5_file_stays_on_the_server():
    # ImageNet: 50,000 images x 1,000 classes of probabilities; the server reduces them to each
    # image's top-5 (kept there) and its hit bits, and the end of the run pulls only these paths
    from evalkit.executors.base import RemoteRun
    from evalkit.run_outputs import result_paths
    from evalkit.zeroshot import PREDICTIONS_FILE
    plan = build_plan(Settings(), Evaluation("imagenet", "test", CHECKPOINT, task=CLASSIFICATION))
    argv = shlex.split(plan.steps[1].command.split(" && ")[-1])
    top5 = argv[argv.index("--predictions") + 1]
    assert top5 == f"{plan.files.out}/{PREDICTIONS_FILE}"
    pulled = result_paths(RemoteRun("run-1", "/runs/run-1", plan))
    assert pulled == ["/runs/run-1/status.json", f"{plan.files.out}/zeroshot_classification_results.json",
                      f"{plan.files.out}/query_hits.json"]
    assert top5 not in pulled


def test_the_plan_runs_evalkit_s_server_script_with_upstream_on_pythonpath():
    settings = Settings(device="cpu")
    plan = build_plan(settings, Evaluation("cifar-100", "test", CHECKPOINT, task=CLASSIFICATION))
    assert [step.name for step in plan.steps] == ["prepare", "zeroshot"]
    assert plan.last_gpu_step == "zeroshot" and plan.has_query_hits
    assert list(plan.result_files) == [CLASSIFICATION]
    assert plan.result_files[CLASSIFICATION].endswith("/zeroshot_classification_results.json")
    command = plan.steps[1].command
    argv = shlex.split(command.split(" && ")[-1])
    assert argv[2:4] == [f"{settings.output_root}/.evalkit/zeroshot.py", "evaluate"]
    assert argv[argv.index("--images") + 1] == f"{settings.datapath}/datasets/cifar-100/test"
    assert argv[argv.index("--label-file") + 1] == f"{settings.datapath}/datasets/cifar-100/label_cn.txt"
    assert argv[argv.index("--device") + 1] == "cpu"
    assert argv[argv.index("--context-length") + 1] == "52"
    assert "PYTHONPATH=" in command and "cpu_launch.py" not in command


def _answer(found) -> bytes:
    return b"EVALKIT-PROVENANCE {}\nEVALKIT-ZEROSHOT " + json.dumps({"refusal": found}).encode() + b"\n"


def test_the_preflight_refusal_is_one_sentence_and_its_fix():
    error = refusal(0, _answer({"message": "label_cn.txt has 11 class names but test has 12 class folders",
                                "fix": "write one line per class folder"}), b"", "CMD")
    assert (error.message, error.hint, error.exit_code) == (
        "label_cn.txt has 11 class names but test has 12 class folders", "write one line per class folder", 17)
    assert refusal(0, _answer(None), b"", "CMD") is None


def test_a_preflight_that_did_not_answer_says_how_to_see_why():
    error = refusal(1, b"", b"Traceback\nModuleNotFoundError: No module named 'PIL'\n", "CMD")
    assert "No module named 'PIL'" in error.message and error.hint.endswith("CMD")


def _hits(top1: str, top5: str, digest: str = "d", targets: list[int] | None = None) -> dict:
    document = {"format": "evalkit-query-hits/1", CLASSIFICATION: {
        "queries": len(top1), "reference_sha256": digest, "hits": {"top1": top1, "top5": top5},
        "ci95": {"top1": [10.0, 30.0], "top5": [40.0, 60.0], "mean_per_class_recall": [5.0, 35.0]}}}
    if targets is not None:
        document[CLASSIFICATION]["targets"] = targets
    return parse_query_hits(json.dumps(document).encode())


def _row(label: str, top1: float, hits=None) -> ModelResult:
    numbers = {"top1": top1, "top5": 50.0, "mean_per_class_recall": top1 - 1}
    return ModelResult(label, f"/x/{label}.pt", "ok", {CLASSIFICATION: numbers},
                       ci95={CLASSIFICATION: hits[CLASSIFICATION]["ci95"]} if hits else None, query_hits=hits)


def test_classification_is_paired_by_mcnemar_on_the_same_images_only():
    mine, theirs = _hits("1" * 12 + "0" * 8, "1" * 20), _hits("0" * 20, "1" * 20)
    found = significance(mine, theirs)[CLASSIFICATION]
    assert found["top1"] == {"delta": 60.0, "p_value": 2 / 2 ** 12}
    assert found["top5"] == {"delta": 0.0, "p_value": 1.0}
    assert significance(mine, _hits("0" * 20, "1" * 20, digest="other")) is None


def test_a_comparison_of_classification_rows_has_its_own_columns_and_clip_benchmark_keys():
    baseline = _row("baseline", 20.0, _hits("0" * 20, "1" * 20))
    student = _row("student", 80.0, _hits("1" * 16 + "0" * 4, "1" * 20))
    comparison = build_comparison([baseline, student], "cifar-100", "test", "2025-01-01T00:00:00Z")
    markdown = to_markdown(comparison)
    assert markdown.splitlines()[0] == "Zero-shot classification (%) on cifar-100 test; (±x.xx) against baseline"
    assert "| model | zero-shot top-1 | zero-shot top-5 | zero-shot MPCR |" in markdown
    assert "| student | **80.00** ±10.0 (+60.00\\*) |" in markdown
    assert "exact McNemar test for top-1 and top-5" in markdown
    assert to_csv(comparison).splitlines()[0].startswith("model,status,zs_top1,zs_top5,zs_mean_per_class_recall,")
    model = comparison.to_dict()["models"][1]
    assert model["metrics"] == {"acc1": 0.8, "acc5": 0.5, "mean_per_class_recall": 0.79}
    assert clip_benchmark_metrics({"text_to_image": {"r1": 50.0}})["image_retrieval_recall@1"] == 0.5


def test_mpcr_gets_its_marker_from_the_paired_bootstrap_within_each_class():
    targets = [image % 4 for image in range(20)]
    baseline = _row("baseline", 20.0, _hits("0" * 20, "1" * 20, targets=targets))
    student = _row("student", 80.0, _hits("1" * 16 + "0" * 4, "1" * 20, targets=targets))
    comparison = build_comparison([baseline, student], "cifar-100", "test", "2025-01-01T00:00:00Z")
    assert comparison.rows[1].significance[CLASSIFICATION]["mean_per_class_recall"]["delta"] == 80.0
    markdown = to_markdown(comparison)
    assert "| student | **80.00** ±10.0 (+60.00\\*) | **50.00** ±10.0 (+0.00) | **79.00** ±15.0 (+60.00\\*) |" in markdown
    assert "paired bootstrap within each class for MPCR" in markdown


def test_the_report_has_a_classification_table_and_chart_per_dataset():
    from evalkit import charts, curves, report_html
    rows = [_row("baseline", 20.0, _hits("0" * 20, "1" * 20)), _row("student", 80.0, _hits("1" * 16 + "0" * 4, "1" * 20))]
    comparison = build_comparison(rows, "cifar-100", "test", "2025-01-01T00:00:00Z")
    chart = curves.build_chart(comparison)
    assert (chart.directions, chart.metrics) == ((CLASSIFICATION,), ("top1", "top5", "mean_per_class_recall"))
    page = report_html.build_html([report_html.Section(comparison, charts.render(chart)["svg"])], "now", "results")
    assert "<th>zero-shot top-1</th>" in page and "<strong>80.00</strong> ±10.0 (+60.00*)" in page
    assert 'alt="recall charts: cifar-100 · test"' in page
