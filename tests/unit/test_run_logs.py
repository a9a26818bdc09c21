"""`logs` from one answer of the server (run_logs.logs_text): each started step's heading, its
stdout then stderr without evalkit's marked lines, how it exited; up to a running or failed step."""
from __future__ import annotations

import pytest

from evalkit.plan import Step
from evalkit.run_logs import logs_text

STEPS = [Step("extract", "extract features", "extract", "x"), Step("knn", "KNN search", "knn", "k"),
         Step("recall", "recall", "recall", "r")]


def _done(out: str, err: str = "", code: int = 0) -> dict:
    return {"out": out, "err": err, "exit": f"{code} 1.5\n"}


@pytest.mark.parametrize("answered, expected", [
    ([], ""),
    ([_done("features\n", "warn\n"), _done("k\n"), _done("r\n")],
     "### step extract: extract features\nfeatures\nwarn\n### step extract exited 0\n"
     "### step knn: KNN search\nk\n### step knn exited 0\n### step recall: recall\nr\n### step recall exited 0\n"),
    ([_done("a\n"), {"out": "50%|#####", "err": None, "exit": None}],
     "### step extract: extract features\na\n### step extract exited 0\n### step knn: KNN search\n50%|#####"),
    ([_done("", "Traceback\n", code=1), _done("never\n")],
     "### step extract: extract features\nTraceback\n### step extract exited 1\n"),
    ([_done('EVALKIT-FACTS {"a": 1}\nkept\n', "EVALKIT-FACTS")],
     "### step extract: extract features\nkept\n### step extract exited 0\n"),
    ([_done("bytes \udcff kept\n")], "### step extract: extract features\nbytes \ufffd kept\n### step extract exited 0\n"),
], ids=["nothing started", "three steps ended", "one running", "one failed: the rest never ran",
        "marked lines are the laptop's", "undecodable bytes replaced, as the follower does"])
def test_logs_text(answered, expected):
    assert "".join(logs_text(STEPS, answered)) == expected
