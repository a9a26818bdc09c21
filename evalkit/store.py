"""The local results folder, and the only code that knows its layout:

    RESULTS_DIR/<dataset>/<split>/<label>/      summary.json and upstream's result JSONs
    RESULTS_DIR/<dataset>/<split>/comparison.*  json, csv, md of a comparison
    RESULTS_DIR/logs/                           one log per evaluation followed
    RESULTS_DIR/runs/<run id>.json              run records (attach, logs, status, cancel)
    RESULTS_DIR/runs/current-checkpoints.json   each server dataset split's checkpoint of this
                                                user's last extract step (knn / recall steps)
    RESULTS_DIR/runs/evaluated-cells.json       sweeps and --watch: each cell evaluated, with what
                                                its numbers were made of then (sweep.cell_state)
                                                and its run (not run again while unchanged)

Every file is written atomically and on disk before it replaces the old one: readers see the old
file or the new one, never half of one; its mode is the old file's, else the umask's.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import secrets
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from . import clock
from .config import Settings
from .comparison import Comparison, ModelResult, to_csv, to_markdown
from .errors import ConfigError, LocalWriteError, UnknownRun
from .evaluation import LAST_EXTRACT, Evaluation
from .file_names import fit
from .run_record import RunRecord
from .significance import HITS_FILE, parse_query_hits
from .summary import RESULT_FILE_NAMES

COMPARISON_SUFFIXES = ("json", "csv", "md")
RUN_RECORD_NAME = re.compile(r"\d{8}-\d{6}-[0-9a-f]+\.json")
CURRENT_CHECKPOINTS = "current-checkpoints.json"
EVALUATED_CELLS = "evaluated-cells.json"
_CELLS_LOCK = threading.Lock()  # one read-modify-write of EVALUATED_CELLS at a time in this process


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def of(cls, settings: Settings) -> "LocalStore":
        return cls(Path(settings.results_dir))

    # --- results ------------------------------------------------------------------------------

    def result_dir(self, dataset: str, split: str, label: str) -> Path:
        return self.root / dataset / split / label

    def save_results(self, evaluation: Evaluation, label: str, raw_results: dict[str, bytes],
                     summary: dict, query_hits: bytes | None = None) -> list[Path]:
        """The result JSONs byte for byte, query_hits.json when there is one, and summary.json;
        returns the paths written. A direction this run skipped leaves no earlier run's result
        beside the new summary (nor earlier hits: they would be paired as this run's)."""
        folder = self.result_dir(evaluation.dataset, evaluation.split, label)
        written = [write_atomically(folder / RESULT_FILE_NAMES[direction], raw)
                   for direction, raw in raw_results.items()]
        for direction, name in RESULT_FILE_NAMES.items():
            if direction not in raw_results:
                _remove(folder / name)
        if query_hits is None:
            _remove(folder / HITS_FILE)
        else:
            written.append(write_atomically(folder / HITS_FILE, query_hits))
        text = json.dumps(summary, ensure_ascii=False, indent=2) + "\n"
        written.append(write_atomically(folder / "summary.json", text.encode("utf-8")))
        return written

    def check_label_is_free(self, evaluation: Evaluation) -> None:
        """A label keeps one checkpoint's results: another checkpoint's would silently replace them."""
        summary_path = self.result_dir(evaluation.dataset, evaluation.split, evaluation.label) / "summary.json"
        try:
            kept = json.loads(summary_path.read_text(encoding="utf-8")).get("checkpoint")
        except (OSError, ValueError, AttributeError):
            return  # nothing kept there (or not ours): nothing to lose
        if kept and kept != evaluation.checkpoint:
            raise ConfigError(f"the label {evaluation.label!r} already holds the results of {kept} "
                              f"({summary_path.parent}); this evaluation is of {evaluation.checkpoint}",
                              "give this checkpoint its own --label NAME (or delete that folder if its results may go)")

    def load_evaluated(self, dataset: str | None = None,
                       split: str | None = None) -> dict[tuple[str, str], list[ModelResult]]:
        """Every label's latest summary.json, grouped by (dataset, split)."""
        found: dict[tuple[str, str], list[ModelResult]] = {}
        for path in sorted(self.root.glob("*/*/*/summary.json")):
            key = (path.parent.parent.parent.name, path.parent.parent.name)
            if (dataset and key[0] != dataset) or (split and key[1] != split):
                continue
            result = self.kept_result(*key, path.parent.name)
            if result is not None:
                found.setdefault(key, []).append(result)
        return found

    def kept_result(self, dataset: str, split: str, label: str) -> ModelResult | None:
        """LABEL's row from its summary.json; None when there is none or it is not one of ours
        (or half-edited by hand)."""
        folder = self.result_dir(dataset, split, label)
        try:
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
            result = ModelResult(label, summary["checkpoint"], "ok", summary["recall"],
                                 finished_at=summary.get("timestamp"),
                                 server_output_dir=summary.get("server_output_dir"),
                                 provenance=summary.get("provenance"),
                                 warnings=tuple(summary.get("warnings") or ()),
                                 ci95=summary.get("ci95"), query_hits=_query_hits_in(folder),
                                 run_id=summary.get("run_id"), experiment=summary.get("experiment") or None,
                                 epoch=summary.get("epoch"), step=summary.get("step"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return result

    def has_result_files(self, dataset: str, split: str, label: str, directions: list[str]) -> bool:
        """Whether upstream's result JSON of each direction is kept beside LABEL's summary."""
        folder = self.result_dir(dataset, split, label)
        return all(direction in RESULT_FILE_NAMES and (folder / RESULT_FILE_NAMES[direction]).is_file()
                   for direction in directions)

    # --- comparisons ----------------------------------------------------------------------------

    def comparison_paths(self, dataset: str, split: str) -> dict[str, Path]:
        folder = self.root / dataset / split
        return {suffix: folder / f"comparison.{suffix}" for suffix in COMPARISON_SUFFIXES}

    def save_comparison(self, comparison: Comparison) -> list[Path]:
        """comparison.json, .csv and .md of its dataset and split."""
        paths = self.comparison_paths(comparison.dataset, comparison.split)
        texts = {"json": json.dumps(comparison.to_dict(), ensure_ascii=False, indent=2) + "\n",
                 "csv": to_csv(comparison), "md": to_markdown(comparison)}
        return [write_atomically(paths[suffix], texts[suffix].encode("utf-8")) for suffix in COMPARISON_SUFFIXES]

    # --- the HTML report and its figures ---------------------------------------------------------

    @property
    def report_path(self) -> Path:
        return self.root / "report.html"

    def save_report(self, page: str, path: Path | None = None) -> Path:
        """The report page at PATH (default RESULTS_DIR/report.html)."""
        return write_atomically(path or self.report_path, page.encode("utf-8"))

    @staticmethod
    def save_figures(folder: Path, figures: dict[str, bytes]) -> list[Path]:
        """Each figure as FOLDER/<file name>."""
        return [write_atomically(folder / name, data) for name, data in figures.items()]

    # --- logs -----------------------------------------------------------------------------------

    def new_log_path(self, evaluation: Evaluation, label: str) -> Path:
        stages = "" if evaluation.runs_every_stage else f"-{'-'.join(evaluation.stages)}"
        # a long label is shortened here (its results folder is checked before the run: evaluation.py)
        name = fit(f"{evaluation.dataset}-{evaluation.split}-{label}{stages}", f"-{clock.name_stamp()}.log")
        return self.root / "logs" / name

    @staticmethod
    def open_log(path: Path) -> BinaryIO:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return path.open("wb")
        except OSError as exc:
            raise LocalWriteError(f"cannot write the log {path}: {exc.strerror or exc}",
                                  "check the --results-dir location is writable") from exc

    # --- run records ----------------------------------------------------------------------------

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def save_record(self, record: RunRecord) -> Path:
        return write_atomically(self.runs_dir / f"{record.run_id}.json", record.to_json().encode("utf-8"))

    def forget_record(self, run_id: str) -> None:
        """For a run the server refused: nothing of it runs, nothing to attach to."""
        _remove(self.runs_dir / f"{run_id}.json")

    def load_record(self, run_id: str) -> RunRecord:
        path = self.runs_dir / f"{run_id}.json"
        if "/" in run_id or not path.is_file():
            known = [record.run_id for record in self.newest_records(5)]
            raise UnknownRun(f"no run {run_id!r} in {self.runs_dir}",
                             "python -m evalkit status lists the runs" + (f"; newest: {', '.join(known)}" if known else ""))
        try:
            return RunRecord.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UnknownRun(f"the record of run {run_id!r} ({path}) is unreadable or from another evalkit "
                             "version", "follow that run with the evalkit version that started it") from exc

    def newest_records(self, count: int) -> list[RunRecord]:
        records = []
        paths = [path for path in self.runs_dir.glob("*.json") if RUN_RECORD_NAME.fullmatch(path.name)]
        for path in sorted(paths, reverse=True)[:count]:
            try:
                records.append(RunRecord.from_json(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a record from another version, or edited by hand
        return records


    # --- the step flow's current checkpoint ---------------------------------------------------

    def make_current(self, settings: Settings, evaluation: Evaluation) -> None:
        """EVALUATION's checkpoint becomes the one this user's next knn / recall step without
        --model-path evaluates, for its host, datapath, dataset and split."""
        current = self._current_checkpoints()
        current[_current_key(settings, evaluation)] = {
            "checkpoint": evaluation.checkpoint, "label": evaluation.label, "vision_model": evaluation.vision_model,
            "text_model": evaluation.text_model, "since": clock.timestamp()}
        text = json.dumps(current, ensure_ascii=False, indent=2) + "\n"
        write_atomically(self.runs_dir / CURRENT_CHECKPOINTS, text.encode("utf-8"))

    def current_checkpoint(self, settings: Settings, evaluation: Evaluation) -> Evaluation | None:
        """EVALUATION (which names no checkpoint) with the checkpoint of this user's last
        extract step for its host, datapath, dataset and split; None when there was none."""
        found = self._current_checkpoints().get(_current_key(settings, evaluation))
        if not isinstance(found, dict) or not found.get("checkpoint"):
            return None
        return dataclasses.replace(evaluation, checkpoint=found["checkpoint"],
                                   label=evaluation.label or found.get("label") or "",
                                   vision_model=found.get("vision_model") or evaluation.vision_model,
                                   text_model=found.get("text_model") or evaluation.text_model,
                                   chosen_by=LAST_EXTRACT)

    def _current_checkpoints(self) -> dict:
        """The record; {} when there is none yet. A damaged one is refused, never replaced: the next
        extract step would silently make it a record of one split."""
        return _json_record(self.runs_dir / CURRENT_CHECKPOINTS, "the record of each split's current checkpoint",
                            "a knn or recall step then needs --model-path until an extract step runs again")


    # --- sweeps and --watch: the cells evaluated, and what from ----------------------------------

    def evaluated_cell(self, key: str) -> dict | None:
        """The record of the cell KEY names (sweep.cell_key): its sweep.cell_state when it was
        last evaluated, and that run's id."""
        found = self._evaluated_cells().get(key)
        return found if isinstance(found, dict) else None

    def remember_cell(self, key: str, record: dict) -> None:
        # a queue's GPUs finish cells at once, and a watch and a sweep may share the results
        # folder: no record may be lost between them, whichever thread or process writes
        with _CELLS_LOCK, self._cells_file_lock():
            cells = self._evaluated_cells()
            cells[key] = record
            text = json.dumps(cells, ensure_ascii=False, indent=2) + "\n"
            write_atomically(self.runs_dir / EVALUATED_CELLS, text.encode("utf-8"))

    @contextmanager
    def _cells_file_lock(self) -> Iterator[None]:
        """flock on a file beside the record (never the record itself: it is replaced by renames)."""
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.runs_dir / f"{EVALUATED_CELLS}.lock", "a")
        except OSError as exc:
            raise LocalWriteError(f"cannot write {self.runs_dir / EVALUATED_CELLS}: {exc.strerror or exc}",
                                  "check the --results-dir location is writable") from exc
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
            yield

    def _evaluated_cells(self) -> dict:
        """The record; {} when there is none yet. A damaged one is refused, never replaced: the
        next cell remembered would silently make it a record of one cell."""
        return _json_record(self.runs_dir / EVALUATED_CELLS, "the record of the cells evaluated",
                            "every cell is then evaluated again, its features reused")


def _json_record(path: Path, what: str, without_it: str) -> dict:
    """The JSON object in PATH, WHAT it records; {} when there is none yet. An unreadable one is
    refused (LocalWriteError), never replaced; WITHOUT_IT: what moving it away costs."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise LocalWriteError(f"{what}, {path}, is unreadable ({exc}): evalkit will not replace it",
                              f"restore it, or move it away (mv {path} {path}.damaged): {without_it}") from exc
    if not isinstance(found, dict):
        raise LocalWriteError(f"{what}, {path}, is not one of evalkit's: evalkit will not replace it",
                              f"move it away (mv {path} {path}.damaged)")
    return found


def _current_key(settings: Settings, evaluation: Evaluation) -> str:
    return json.dumps([settings.host, settings.datapath, evaluation.dataset, evaluation.split], ensure_ascii=False)


def _query_hits_in(folder: Path) -> dict | None:
    try:
        return parse_query_hits((folder / HITS_FILE).read_bytes())
    except OSError:
        return None  # an older run, or one whose hits were not written: no test, no interval


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise LocalWriteError(f"cannot remove the stale {path}: {exc.strerror or exc}",
                              "check the --results-dir location is writable") from exc


def write_atomically(path: Path, data: bytes) -> Path:
    """A new temporary file beside PATH, on disk (fsync) before a rename over PATH; the temporary
    file never outlives a failure. Its mode is the file's it replaces, else what the umask leaves
    of 0o666, as for any file a program creates: a results folder shared with others stays readable."""
    temporary = path.parent / fit(f".{path.name}", f".{secrets.token_hex(6)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        with os.fdopen(handle, "wb") as out:
            _keep_mode_of(path, out.fileno())
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        _sync_folder(path.parent)
    except OSError as exc:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise LocalWriteError(f"cannot write {path}: {exc.strerror or exc}",
                              "check the --results-dir location is writable") from exc
    return path


def _keep_mode_of(path: Path, handle: int) -> None:
    try:
        os.fchmod(handle, stat.S_IMODE(os.stat(path).st_mode))
    except FileNotFoundError:
        pass  # a new file: the umask chose its mode


def _sync_folder(folder: Path) -> None:
    """The rename itself on disk (a crash after it leaves the new file, not an empty name)."""
    try:
        handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # a filesystem that cannot open folders: the rename is as durable as it makes it
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
