"""One evaluation, start to finish: connect, check, decide, launch, follow, record, save.

Both entry scripts come here: the one-shot run asks for every stage, quick_evaluation.py for one.
Before anything runs, the server's files are inspected (remote/inspect_outputs.py) and
server_outputs.py decides whether each stage may run: features are reused only when complete
and made from the same checkpoint, and KNN and recall only ever read files of one recorded
extraction. Before an extraction, the doctor's preflight checks the dataset and the checkpoint.
The run itself is launched by an executor (executors/) and followed through the events the server
pushes as its files change (follow.py, event_stream.py).
"""
from __future__ import annotations

import atexit
import dataclasses
import importlib.metadata
import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .config import Settings
from .diagnosis import preflight_call
from .doctor import preflight
from .errors import ConnectionLost, EvalkitError, RemoteStepFailed, RunLocked, ServerFileError, SlurmRefused
from .evaluation import CLASSIFICATION, Evaluation
from .executors import executor_class
from .executors.base import CancelResult, Executor, Launched, RemoteRun, RunGroup
from .follow import Follower
from .gpu_lane import LaneHold
from .outcome import Reporter, RunOutcome
from .provenance import RUN_FILE as PROVENANCE_FILE, build_provenance, facts_printed as provenance_facts, \
    provenance_call
from .plan import PROVENANCE_STEP, Step, build_plan, inspect_call, inspect_command
from .readiness import decide, locate
from .run_logs import followed_logs, logs_text
from .run_outputs import Collected, OutputRecorder, result_paths, take_results
from .run_record import RunRecord, new_record, new_run_id
from . import zeroshot
from .server import PROBE, PROVENANCE, ZEROSHOT, run_dir, scripts_for
from .server_outputs import ServerFacts
from .session import Session
from .ssh import Connection, PendingCommand, resolve_target
from .starter import Starter
from .store import LocalStore
from .summary import build_summary


@dataclass(frozen=True)
class Report:
    evaluation: Evaluation     # as run: the checkpoint chosen, extraction skipped when reused
    outcome: RunOutcome
    facts: ServerFacts | None  # the server's files after extraction / KNN, when they ran
    summary: dict | None       # only when recall ran
    written: list[Path]
    log_path: Path


@contextmanager
def connected(settings: Settings, shared: Connection | None = None,
              group: RunGroup | None = None) -> Iterator[tuple[Session, Executor]]:
    """Connected (host key and auth checked) before any local file is created. SHARED: a
    connection that serves several evaluations one after another (a sweep), opened here when
    it is not yet, and left open for the next. GROUP: what the executors of one command share
    (new_group). Without SHARED, the connection a look before the evaluations opened (looking),
    else a new one; closed at the end."""
    if shared is not None:
        with _executor_on(shared.open(), settings, group) as pair:
            yield pair
        return
    with sweep_connection(settings).open() as connection:
        with _executor_on(connection, settings, group) as pair:
            yield pair


# host -> the connection a look before the evaluations opened, until an evaluation takes it
_KEPT: dict[tuple, Connection] = {}
_KEPT_LOCK = threading.Lock()


@contextmanager
def looking(settings: Settings, will_evaluate: bool = True) -> Iterator[Session]:
    """A look at the server before any evaluation (a dataset's layout, a sweep's checkpoints) on
    the command's first connection to it, kept open for the first evaluation (connected,
    sweep_connection), which closes it: one connection and one authentication per command.
    WILL_EVALUATE: an evaluation follows (not a dry run), so its starter is begun now."""
    key = _host_of(settings)
    with _KEPT_LOCK:
        first = key not in _KEPT
        if first:
            _KEPT[key] = Connection(resolve_target(settings.host, settings.ssh_config_path), settings.connect_timeout)
        connection = _KEPT[key]
    connection.open()
    if first and will_evaluate:  # its evaluation's starter, begun while the look goes on (starter.py begin_early)
        Starter.begin_early(connection, settings)
    yield Session(connection)


def _host_of(settings: Settings) -> tuple:
    return settings.host, settings.ssh_config_path, settings.connect_timeout


@atexit.register
def _close_kept() -> None:
    """A look's connection no evaluation took (the command failed between)."""
    with _KEPT_LOCK:
        for connection in _KEPT.values():
            connection.close()
        _KEPT.clear()


def new_group(settings: Settings) -> RunGroup:
    """What the evaluations of one command share, whatever their thread: their runs (Ctrl-C
    cancels them all, cancel_group) and what their executor shares (Slurm: one squeue per poll)."""
    return executor_class(settings.executor).group_class()


@contextmanager
def _executor_on(connection: Connection, settings: Settings,
                 group: RunGroup | None) -> Iterator[tuple[Session, Executor]]:
    executor = executor_class(settings.executor)(connection, settings, group)
    try:
        yield Session(connection), executor
    finally:
        executor.close()


def sweep_connection(settings: Settings) -> Connection:
    """One connection for the evaluations of a sweep (threads may share it): opened by the first
    (connected()), closed by the caller after the last. The one a look opened, if any (looking)."""
    with _KEPT_LOCK:
        kept = _KEPT.pop(_host_of(settings), None)
    return kept or Connection(resolve_target(settings.host, settings.ssh_config_path), settings.connect_timeout)


def evaluate(settings: Settings, evaluation: Evaluation, reporter: Reporter, detach: bool = False,
             shared: Connection | None = None, group: RunGroup | None = None,
             hold: LaneHold | None = None, on_detached: Callable[[RunRecord], None] | None = None
             ) -> Report | RunRecord:
    """Run EVALUATION's stages on the server; recall results land in the local store.

    The steps run detached on the server; with DETACH the run record is returned as soon as
    they started (ON_DETACHED tells the user first), else they are followed to the end. SHARED,
    GROUP: see connected(). HOLD: its ticket on settings.gpu's lane in a queue (gpu_lane.py): the
    checks run at once, the launch waits for the GPU, which is given back when the last GPU step
    ends.
    """
    try:
        with connected(settings, shared, group) as (session, executor):
            store = LocalStore.of(settings)
            evaluation, facts, origin = _ready(session, executor, store, settings, evaluation, reporter)
            record = _new_run(store, settings, evaluation, hold, executor.group)
            try:
                with _in_custody(executor, store, record, reporter) as custody:
                    launched = _launch(executor, store, record, _provenance_file(record, origin))
                    record = _started(store, record, launched, reporter)
                    if detach:
                        (on_detached or _nothing)(record)
                        return record
                    custody.following = True
                    return _follow_to_end(session, executor, record, reporter, facts, launched.events,
                                          gpu_done=hold.give_back if hold is not None else _nothing)
            except BaseException:  # custody said what became of the run; its GPU goes back only once it ended
                _leave_gpu(executor, record, hold)
                raise
    finally:
        if hold is not None:  # whatever happened, the next evaluation on this GPU may go
            hold.give_back()


def _nothing(*_) -> None:
    pass


def _leave_gpu(executor: Executor, record: RunRecord, hold: LaneHold | None) -> None:
    """Following ended before the run's last GPU step did: the GPU is given back only when the
    run's files say it ended; else (the server cannot be asked, the run goes on) it is kept."""
    if hold is None or hold.state != "held":
        return
    if _has_ended(executor, record):
        hold.give_back()
    else:
        hold.keep(f"run {record.run_id} may still be using it: evalkit stopped following it "
                  f"(python -m evalkit attach {record.run_id}, or cancel {record.run_id})")


def _has_ended(executor: Executor, record: RunRecord, tries: int = 5) -> bool:
    """Whether the run's driver wrote how it ended (a failed step's run is ending: a few looks)."""
    for _ in range(tries):
        try:
            found = executor.state(_remote(record))
        except (EvalkitError, OSError):
            return False
        if found.state is not None or not found.driver_alive:
            return found.state is not None
        time.sleep(0.5)
    return False


def _ready(session: Session, executor: Executor, store: LocalStore, settings: Settings, evaluation: Evaluation,
           reporter: Reporter) -> tuple[Evaluation, ServerFacts, dict | None]:
    """EVALUATION as it will run (its checkpoint chosen, what can be reused skipped), once every
    check before GPU time passed; the server's facts about its files; and what the numbers are
    made from, when it is known before the launch (classification: its check prints it; a
    retrieval's provenance is hashed beside the steps, Plan.beside)."""
    if evaluation.task == CLASSIFICATION:
        return _ready_to_classify(session, executor, store, settings, evaluation)
    # every remote command waits on a login shell of its own (~/.bashrc, conda init): the
    # executor begins what the run needs first, and the checks run in the env it activated
    executor.prepare(scripts_for(settings, extra=((PROBE,) if evaluation.runs_extraction else ()) + (PROVENANCE,)))
    evaluation = _current_unless_named(store, settings, evaluation, reporter)
    checks = _first_checks(settings, evaluation, executor)
    evaluation, facts = locate(session.connection, settings, evaluation, reporter, checks.get("inspect"))
    evaluation = decide(settings, evaluation, facts, reporter)
    if "recall" in evaluation.stages:
        store.check_label_is_free(evaluation)
    if evaluation.runs_extraction:
        preflight(settings, evaluation, checks["preflight"])
    _check_it_can_be_followed(session, executor)
    return evaluation, facts, None  # the provenance is gathered beside the steps (Plan.beside)


def _ready_to_classify(session: Session, executor: Executor, store: LocalStore, settings: Settings,
                       evaluation: Evaluation) -> tuple[Evaluation, None, dict]:
    """Zero-shot classification: one check (remote/zeroshot.py check) refuses a dataset upstream
    would get wrong, in one sentence and before anything runs; it prints the provenance too."""
    executor.prepare(scripts_for(settings, extra=(ZEROSHOT, PROVENANCE)))
    store.check_label_is_free(evaluation)
    ran = executor.run_scripts({"check": zeroshot.check_call(settings, evaluation)},
                               timeout=settings.step_timeout)["check"]
    refusal = zeroshot.refusal(*ran, zeroshot.check_command(settings, evaluation))
    if refusal is not None:
        raise refusal
    _check_it_can_be_followed(session, executor)
    return evaluation, None, _server_provenance(executor, settings, evaluation, ran)


def _check_it_can_be_followed(session: Session, executor: Executor) -> None:
    """A run that could not be followed must not start: an executor that reads the run's files
    over SFTP is refused a server without it (TransferUnavailable) before the run, not after."""
    if executor.follows_over_sftp:
        session.check_transfer()


def _new_run(store: LocalStore, settings: Settings, evaluation: Evaluation, hold: LaneHold | None,
             group: RunGroup) -> RunRecord:
    """The run's record, saved before its launch (state "starting"), once its GPU is free."""
    plan = build_plan(settings, evaluation)
    if hold is not None and plan.last_gpu_step:
        hold.take()
        if group.is_closed:  # the GPU came free because Ctrl-C ended the run before: nothing more starts
            raise RemoteStepFailed(f"{plan.label} was not started: the command was interrupted",
                                   "start the evaluation again")
    elif hold is not None:  # recall alone needs no GPU: it starts at once, the next one need not wait
        hold.give_back()
    run_id = new_run_id()
    record = new_record(settings, evaluation, plan, run_id, run_dir(settings, run_id))
    store.save_record(record)  # first: whatever happens next, attach and cancel can find the run
    return record


def _launch(executor: Executor, store: LocalStore, record: RunRecord, files: dict[str, str]) -> Launched:
    try:
        return executor.launch(_remote(record), files)
    except (RunLocked, SlurmRefused, ServerFileError):
        if executor.group.take(record.run_id):  # refused by the server: it never ran, nothing to cancel
            store.forget_record(record.run_id)
        raise


def _started(store: LocalStore, record: RunRecord, launched: Launched, reporter: Reporter) -> RunRecord:
    record = dataclasses.replace(record, state="started")
    store.save_record(record)
    if "extract" in record.evaluation.stages:  # extracted or reused: the user's next steps follow it
        store.make_current(record.settings, record.evaluation)
    if launched.took_over_stale_lock:
        reporter.note("took over a stale lock on this checkpoint's directory (its run is gone)")
    return record


@dataclass
class _Custody:
    following: bool = False  # from now on the follower says how the run ended, or Ctrl-C cancels it


@contextmanager
def _in_custody(executor: Executor, store: LocalStore, record: RunRecord, reporter: Reporter) -> Iterator[_Custody]:
    """RECORD's run from before its launch until evalkit lets go of it (detached, or followed to its
    end): every way out says what became of it. It joins the command's group first, so that Ctrl-C
    in another thread cancels it too (cancel_group), a launch in flight included. Before it is
    followed, any failure (Ctrl-C, an error, a timeout, a bug) cancels it; while it is followed,
    Ctrl-C cancels it, and a failure that leaves it running says so, with its attach and cancel."""
    if not executor.group.add(_remote(record)):  # Ctrl-C in another thread while this one waited for its GPU
        store.forget_record(record.run_id)
        raise RemoteStepFailed(f"run {record.run_id} was not started: the command was interrupted",
                               "start the evaluation again")
    custody = _Custody()
    try:
        yield custody
    except BaseException as failure:
        if executor.group.take(record.run_id):  # else its taker (refused, cancel_group) said what became of it
            _account_for(executor, record, reporter, failure, custody.following)
        raise
    executor.group.take(record.run_id)  # detached, or followed to its end


def _account_for(executor: Executor, record: RunRecord, reporter: Reporter, failure: BaseException,
                 following: bool) -> None:
    if isinstance(failure, KeyboardInterrupt) or not following:
        _cancel_and_say(executor, record, reporter)
    elif not isinstance(failure, ConnectionLost):  # which says how to re-attach
        _say_if_it_goes_on(executor, record, reporter)


def _say_if_it_goes_on(executor: Executor, record: RunRecord, reporter: Reporter) -> None:
    """After a failure of evalkit's own while the run was followed: the run may not have ended."""
    try:
        found = executor.state(_remote(record))
    except EvalkitError:
        found = None
    if found is None or (found.state is None and found.driver_alive):
        reporter.note(_reach(record.run_id))


def _reach(run_id: str) -> str:
    return (f"run {run_id} may go on on the server: python -m evalkit attach {run_id} follows it, "
            f"python -m evalkit cancel {run_id} stops it")


def _current_unless_named(store: LocalStore, settings: Settings, evaluation: Evaluation,
                          reporter: Reporter) -> Evaluation:
    """Without a checkpoint named, the one of this user's last extract step for this server,
    datapath, dataset and split: never another user's or another experiment's later work."""
    if evaluation.checkpoint:
        return evaluation
    current = store.current_checkpoint(settings, evaluation)
    if current is None:
        return evaluation  # locate() falls back to the server's most recent extraction, and says so
    reporter.note(f"using the checkpoint of your last extract step: {current.checkpoint}; "
                  "pass --model-path to choose another")
    return current


def _first_checks(settings: Settings, evaluation: Evaluation, executor: Executor) -> dict:
    """The inspection of the checkpoint's files (their existence and sizes) and, when it may be
    extracted, the preflight, both at once. Without a checkpoint the inspection looks for the
    latest extraction (locate). Either way the starter's first message: evalkit's scripts are
    made current with it, before locate may run the inspection again outside the starter. The
    checkpoint's SHA-256 is no check: it is hashed beside the steps."""
    calls = {"inspect": inspect_call(settings, evaluation)}
    if evaluation.checkpoint and evaluation.runs_extraction:  # the checks count only if the features cannot be reused
        calls["preflight"] = preflight_call(settings, evaluation)
    ran = executor.run_scripts(calls, timeout=settings.step_timeout)
    # the inspection's command names it in a failure message
    return {**ran, "inspect": (ran["inspect"], inspect_command(settings, evaluation))}


def _server_provenance(executor: Executor, settings: Settings, evaluation: Evaluation,
                       ran: tuple | None) -> dict | None:
    """What remote/provenance.py found (RAN: its exit code, stdout and stderr); run here when
    nothing ran it yet."""
    if "recall" not in evaluation.stages:
        return None
    if ran is None:
        ran = executor.run_scripts({"provenance": provenance_call(settings, evaluation)},
                                   timeout=settings.step_timeout)["provenance"]
    return _provenance_found(*ran)


def _provenance_found(exit_code: int | str | None, stdout: bytes, stderr: bytes) -> dict:
    found = provenance_facts(stdout)
    if found is None:  # the run goes on: its summary says what could not be recorded, and why
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit status {exit_code}"]
        return {"problem": f"remote/provenance.py printed no facts: {tail[0]}"}
    return found


def _evalkit_version() -> str:
    try:
        return importlib.metadata.version("evalkit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _provenance_file(record: RunRecord, origin: dict | None) -> dict[str, str]:
    """The provenance, kept beside the run's files on the server so that `attach` (from any
    laptop) records it too: written by the launch, before the driver starts (a full disk refuses
    the run, nothing started). When the facts are gathered beside the steps (Plan.beside), what
    is written says where they will be."""
    if origin is None and record.plan.beside_step(PROVENANCE_STEP) is not None:
        origin = {BESIDE: PROVENANCE_STEP}
    return {} if origin is None else {PROVENANCE_FILE: json.dumps(origin, ensure_ascii=False)}


BESIDE = "printed_beside_the_steps"  # provenance.json's only key when the facts are in beside-NAME.out


def _provenance_paths(record: RunRecord) -> list[str]:
    """Where _kept_provenance finds the facts: brought back with the results (run_outputs.result_paths)."""
    run = _remote(record)
    return [run.path(PROVENANCE_FILE), *(run.path(f"beside-{PROVENANCE_STEP}.{stream}") for stream in BESIDE_FILES)]


BESIDE_FILES = ("exit", "out", "err")


def _kept_provenance(collected: Collected, record: RunRecord) -> dict | None:
    """The facts written before the launch or, where that file points there, those printed beside
    the steps (beside-provenance.out), as COLLECTED from the server at the run's end."""
    run = _remote(record)

    def content(path: str) -> bytes:
        return (collected.get(path) or (None, b""))[1]
    try:
        kept = json.loads(content(run.path(PROVENANCE_FILE)))
    except ValueError:
        kept = None  # hashed beside the steps; or a run started by an evalkit that kept none
    if isinstance(kept, dict) and BESIDE not in kept:
        return kept
    if record.plan.beside_step(PROVENANCE_STEP) is None:
        return None
    code, stdout, stderr = (content(run.path(f"beside-{PROVENANCE_STEP}.{stream}")) for stream in BESIDE_FILES)
    return _provenance_found(code.decode("ascii", "replace").strip() or None, stdout, stderr)


def attach(record: RunRecord, reporter: Reporter) -> Report:
    """Follow a run started earlier (perhaps with --detach) to its end, exactly as if attached."""
    with connected(record.settings) as (session, executor):
        with _in_custody(executor, LocalStore.of(record.settings), record, reporter) as custody:
            custody.following = True
            return _follow_to_end(session, executor, record, reporter)


def cancel(record: RunRecord, grace: float = 10.0) -> CancelResult:
    with connected(record.settings) as (_, executor):
        return executor.cancel(_remote(record), grace)


def cancel_group(settings: Settings, group: RunGroup, grace: float = 10.0) -> dict[str, CancelResult]:
    """Ctrl-C in a command of several evaluations: no run joins GROUP any more, and every run
    still going is cancelled at once, over a connection of its own; by run id."""
    runs = group.close()
    if not runs:
        return {}
    with connected(settings, group=group) as (_, executor):
        return executor.cancel_all(runs, grace)


def logs(record: RunRecord, follow: bool, note: Callable[[str], None] = _nothing) -> Iterator[str]:
    """Each step's output as text, step by step: what the server has, in one ask; with FOLLOW
    as the run's event stream brings it, until the run ends, reconnecting (telling NOTE) as a
    followed run does."""
    run = _remote(record)
    with connected(record.settings) as (session, executor):
        if not follow:
            yield from logs_text(run.plan.steps, executor.step_logs(run))
            return
        session.resilient(record.settings.reconnect_timeout, note,
                          f"follow it again: python -m evalkit logs -f {record.run_id}")
        yield from followed_logs(session, executor, run)


def _remote(record: RunRecord) -> RemoteRun:
    return RemoteRun(record.run_id, record.server_run_dir, record.plan)


def _follow_to_end(session: Session, executor: Executor, record: RunRecord, reporter: Reporter,
                   facts: ServerFacts | None = None, events: PendingCommand | None = None,
                   gpu_done: Callable[[], None] = _nothing) -> Report:
    """EVENTS: the launch's channel, now the run's event stream (else the follower opens one).
    GPU_DONE: told once the run's last GPU step has ended."""
    settings, evaluation, plan = record.settings, record.evaluation, record.plan
    store = LocalStore.of(settings)
    log_path = store.new_log_path(evaluation, plan.label)
    reporter.log_opened(log_path)
    outcome = RunOutcome(plan)
    session.resilient(settings.reconnect_timeout, reporter.note,
                      f"re-attach later: python -m evalkit attach {record.run_id}")
    with store.open_log(log_path) as log:
        follower = Follower(session, executor, _remote(record), reporter, log, settings.step_timeout, events)
        recorder = OutputRecorder(settings, evaluation, plan, follower, facts)

        def step_done(step: Step) -> None:
            recorder.step_done(step)
            if step.name == plan.last_gpu_step:
                gpu_done()

        follower.follow(outcome, step_done)
        executor.group.discard(record.run_id)  # followed to its end: Ctrl-C in another thread leaves it be
        collected = follower.collect(result_paths(_remote(record)) + _provenance_paths(record))  # the one ask
        take_results(collected, _remote(record), outcome)
    if "recall" not in evaluation.stages:
        return Report(evaluation, outcome, recorder.facts, None, [], log_path)
    origin = build_provenance(_kept_provenance(collected, record), settings, evaluation, _evalkit_version())
    summary = build_summary(outcome, evaluation, settings.host, log_path, origin, record.run_id)
    written = store.save_results(evaluation, plan.label, outcome.raw_results, summary, outcome.raw_query_hits)
    return Report(evaluation, outcome, recorder.facts, summary, written, log_path)


def _cancel_and_say(executor: Executor, record: RunRecord, reporter: Reporter) -> None:
    """Nothing of the run may go on holding the server's GPU unannounced."""
    try:
        result = executor.cancel(_remote(record), 10.0)
    except EvalkitError as error:
        reporter.note(f"could not cancel run {record.run_id} ({error.message}): "
                      f"python -m evalkit cancel {record.run_id}")
        return
    reporter.note(result.describe(record.run_id))
