"""Long runs that survive the network, on the real test bed with real faults: a killed sshd
mid-extraction, Ctrl-C, detach and attach, two runs on one checkpoint, a stale lock, a flood of
output. The run itself lives on the server (remote/job.py); the client only follows it."""
from __future__ import annotations

import hashlib
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalkit.errors import INTERRUPTED_EXIT_CODE, MissingInput, RunLocked
from evalkit.plan import Step
from evalkit.ssh import Connection, resolve_target

from .conftest import DATASETS, ENTRY_SCRIPT, REPO, run_upstream_by_hand, start_interruptible
from .server_runs import assert_every_step_whole, assert_no_starter_left, launch_one_shot, logs_argv, \
    processes_of, run_dirs, starters_of, wait_for_extraction

pytestmark = pytest.mark.integration

SPEC = DATASETS[0]


def _evalkit(bed, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalkit", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def _pulled(bed) -> dict[str, dict]:
    local = bed.results_dir / SPEC.name / SPEC.split / "muge_finetune_rn50_rbt3_team_distill"
    return {d: json.loads((local / f"{d}_results.json").read_text()) for d in ("text_to_image", "image_to_text")}


def test_a_dropped_connection_mid_extraction_costs_nothing(testbed, tmp_path):
    client = launch_one_shot(testbed)
    run_dir = wait_for_extraction(testbed)
    killed = testbed.sshd.kill_sessions()
    assert killed, "no sshd session process to kill"
    out, err = client.communicate(timeout=300)
    assert client.returncode == 0, err + out
    assert "connection lost" in out and "reconnected" in out
    assert _pulled(testbed) == run_upstream_by_hand(testbed, SPEC, tmp_path / "by-hand")
    _assert_every_line_once(testbed, run_dir)


def test_an_event_stream_gone_silent_is_taken_for_a_dropped_link_and_resumed_where_it_left_off(testbed):
    # the link is up but the server's end of the stream stops (no event, no heartbeat)
    client = launch_one_shot(testbed)
    run_dir = wait_for_extraction(testbed)
    [starter] = starters_of(testbed)
    os.kill(starter, signal.SIGSTOP)
    try:
        out, err = client.communicate(timeout=300)
    finally:
        os.kill(starter, signal.SIGCONT)
    assert client.returncode == 0, err + out
    assert "connection lost (no word from seetacloud-v800 for 2" in out and "reconnected" in out
    _assert_every_line_once(testbed, run_dir)


def test_logs_follow_across_a_dropped_connection_shows_every_line_once(testbed):
    started = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint),
                               "--detach")
    assert started.returncode == 0, started.stderr
    followed = subprocess.Popen(logs_argv(testbed, "-f", started.stdout.split("started run ")[1].split()[0]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                                env={**os.environ, "COLUMNS": "200"})
    run_dir = wait_for_extraction(testbed)
    killed = testbed.sshd.kill_sessions()
    assert killed, "no sshd session process to kill"
    out, err = followed.communicate(timeout=300)
    assert followed.returncode == 0, err.decode()
    assert b"connection lost" in err and b"reconnected" in err, err.decode()  # on stderr: stdout is the logs
    assert_every_step_whole(out.decode(), run_dir)


def _assert_every_line_once(testbed, run_dir: Path) -> None:
    """Nothing ran twice, and every line the server wrote reached the local log exactly once."""
    steps = range(len(json.loads((run_dir / "run.json").read_text())["steps"]))
    assert sorted(p.name for p in run_dir.glob("step-*.exit")) == [f"step-{i}.exit" for i in steps]
    [log] = (testbed.results_dir / "logs").glob("*.log")
    local = log.read_bytes()
    assert local.count(b"### step extract:") == 1
    # Without evalkit's own step lines, the local log holds exactly the bytes the server wrote.
    followed = re.sub(rb"\n### step [a-z0-9_]+: [^\n]*\n|### step [a-z0-9_]+ exited -?\d+ after [0-9.]+ s\n",
                      b"", local)
    written = sum((run_dir / f"step-{i}.{stream}").stat().st_size for i in steps for stream in ("out", "err"))
    assert len(followed) == written


def test_ctrl_c_cancels_the_remote_run_and_leaves_nothing_running(testbed):
    client = launch_one_shot(testbed)
    run_dir = wait_for_extraction(testbed)
    run_id = run_dir.name
    assert processes_of(run_id), "the run should be running on the server"
    assert starters_of(testbed), "the attached client's doorbell"
    client.send_signal(signal.SIGINT)
    out, err = client.communicate(timeout=60)
    assert client.returncode == INTERRUPTED_EXIT_CODE, err + out
    assert f"cancelled run {run_id}: no process of it remains on the server" in out
    assert processes_of(run_id) == []
    assert_no_starter_left(testbed)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "cancelled"
    assert not list(testbed.server_outputs.rglob(".evalkit-lock"))  # the checkpoint is free again


def test_ctrl_c_with_several_models_at_once_cancels_every_run(testbed, second_checkpoint, third_checkpoint):
    checkpoints = {"team": testbed.checkpoint, "large": second_checkpoint, "baseline": third_checkpoint}
    testbed.write_config(models={name: {"path": str(path)} for name, path in checkpoints.items()})
    client = start_interruptible([sys.executable, str(ENTRY_SCRIPT), "--config", str(testbed.config),
                                  "--model", "all", "--gpus", "0,1,2"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=testbed.results_dir.parent, stdin=subprocess.DEVNULL,
                                 env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 180
    while sum((run_dir / "step-1.started").exists() for run_dir in run_dirs(testbed)) < 3:
        assert time.monotonic() < deadline, "the three extractions never started"
        time.sleep(0.2)
    run_ids = [run_dir.name for run_dir in run_dirs(testbed)]
    client.send_signal(signal.SIGINT)
    out, err = client.communicate(timeout=180)
    assert client.returncode == INTERRUPTED_EXIT_CODE, err + out
    for run_id in run_ids:
        assert f"cancelled run {run_id}: no process of it remains on the server" in out, out
        assert processes_of(run_id) == []
        run_dir = testbed.server_outputs / ".evalkit" / "runs" / run_id
        assert json.loads((run_dir / "status.json").read_text())["state"] == "cancelled"
    assert "Traceback" not in err
    assert not list(testbed.server_outputs.rglob(".evalkit-lock"))  # every checkpoint is free again


def test_detach_then_attach_gives_the_attached_results(testbed, tmp_path):
    started = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint),
                               "--detach")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split("started run ")[1].split()[0]
    assert f"python -m evalkit attach {run_id}" in started.stdout
    assert not (testbed.results_dir / SPEC.name).exists()  # nothing pulled yet
    assert_no_starter_left(testbed)  # its channel closed: no one to ring for

    status = _evalkit(testbed, "status", run_id, "--config", str(testbed.config))
    assert status.returncode == 0 and run_id in status.stdout, status.stderr

    attached = _evalkit(testbed, "attach", run_id, "--config", str(testbed.config))
    assert attached.returncode == 0, attached.stderr
    assert "text→image" in attached.stdout and "image→text" in attached.stdout
    assert _pulled(testbed) == run_upstream_by_hand(testbed, SPEC, tmp_path / "by-hand")
    summary = json.loads((testbed.results_dir / SPEC.name / SPEC.split / testbed.checkpoint.parent.parent.name
                          / "summary.json").read_text(encoding="utf-8"))
    # what the run was made from, gathered before it started, is recorded by attach too
    assert summary["provenance"]["checkpoint"]["sha256"] == hashlib.sha256(testbed.checkpoint.read_bytes()).hexdigest()

    logs = _evalkit(testbed, "logs", run_id, "--config", str(testbed.config))
    assert logs.returncode == 0 and "### step extract:" in logs.stdout and "### step recall_i2t exited 0" in logs.stdout
    status = _evalkit(testbed, "status", run_id, "--config", str(testbed.config))
    assert "succeeded" in status.stdout


def test_a_second_run_on_the_same_checkpoint_is_refused_naming_the_first(testbed):
    first = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint),
                             "--detach")
    run_id = first.stdout.split("started run ")[1].split()[0]
    second = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    assert second.returncode == RunLocked.exit_code, second.stderr
    assert f"run {run_id} is already evaluating this checkpoint" in second.stderr
    assert f"python -m evalkit attach {run_id}" in second.stderr
    attached = _evalkit(testbed, "attach", run_id, "--config", str(testbed.config))
    assert attached.returncode == 0, attached.stderr


def _lock_of_the_checkpoint(testbed) -> Path:
    from evalkit.config import Settings
    from evalkit.plan import checkpoint_output_dir

    settings = Settings(datapath=str(testbed.datapath), remote_output_dir=str(testbed.server_outputs))
    out_dir = Path(checkpoint_output_dir(settings, SPEC.name, SPEC.split, str(testbed.checkpoint)))
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir / ".evalkit-lock"


def _held_on_another_node(heartbeat_age: float) -> str:
    # a driver on another node of a cluster: its pid is nothing in this node's /proc (pid 1 is alive here)
    return json.dumps({"host": "gpu-node-17", "boot_id": "another-boot", "pid": 1, "start_time": 1,
                       "run_id": "20200101-000000-there0", "taken_at": "2020-01-01T00:00:00+0000",
                       "heartbeat": time.time() - heartbeat_age})


def test_a_lock_held_on_another_node_with_a_fresh_heartbeat_is_not_taken_over(testbed):
    lock = _lock_of_the_checkpoint(testbed)
    lock.write_text(_held_on_another_node(heartbeat_age=5))
    run = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    assert run.returncode == RunLocked.exit_code, run.stderr
    assert "run 20200101-000000-there0 is already evaluating this checkpoint" in run.stderr
    assert json.loads(lock.read_text())["run_id"] == "20200101-000000-there0"  # left as it was
    lock.unlink()


def test_a_stale_lock_is_taken_over(testbed):
    lock = _lock_of_the_checkpoint(testbed)
    lock.write_text(_held_on_another_node(heartbeat_age=3600))  # its node went down an hour ago
    run = testbed.evaluate("--datapath", str(testbed.datapath), "--model-path", str(testbed.checkpoint))
    assert run.returncode == 0, run.stderr
    assert "took over a stale lock" in run.stdout
    assert not lock.exists()  # released at the end


class _Counting:
    def __init__(self) -> None:
        self.lines = {"stdout": 0, "stderr": 0}

    def step_started(self, *args) -> None: ...

    def step_event(self, step, event) -> None:
        if hasattr(event, "stream"):
            self.lines[event.stream] += 1

    def step_finished(self, *args) -> None: ...

    def note(self, text) -> None: ...

    def log_opened(self, path) -> None: ...


def test_ten_megabytes_on_both_streams_of_a_detached_step_arrive_whole(testbed, tmp_path):
    from evalkit.config import Settings
    from evalkit.evaluation import Evaluation
    from evalkit.executors.base import RemoteRun
    from evalkit.executors.ssh import SshExecutor
    from evalkit.follow import Follower
    from evalkit.outcome import RunOutcome
    from evalkit.plan import build_plan
    from evalkit.server import run_dir, scripts_for
    from evalkit.session import Session

    settings = Settings(datapath=str(testbed.datapath), remote_output_dir=str(testbed.server_outputs),
                        python=str(testbed.server_python), activate="true")
    command = ("python3 -c \"import sys\nfor i in range(100000): print('o' * 99)\" & "
               "python3 -c \"import sys\nfor i in range(100000): print('e' * 99, file=sys.stderr)\"; wait")
    step = Step("flood", "10 MB on each stream", "extract", command)
    plan = build_plan(settings, Evaluation(SPEC.name, SPEC.split, str(testbed.checkpoint)))
    plan = type(plan)(plan.label, plan.checkpoint, str(tmp_path / "out"), None, (step,), {}, plan.files)
    target = resolve_target("seetacloud-v800", testbed.ssh_dir / "config")
    with Connection(target) as connection:
        executor = SshExecutor(connection, settings)
        executor.prepare(scripts_for(settings))
        remote = RemoteRun("flood-test", run_dir(settings, "flood-test"), plan)
        launched = executor.launch(remote)
        reporter = _Counting()
        with (tmp_path / "log").open("wb") as log:
            Follower(Session(connection), executor, remote, reporter, log, step_timeout=600,
                     events=launched.events).follow(RunOutcome(plan), lambda s: None)
        executor.close()
    assert reporter.lines == {"stdout": 100000, "stderr": 100000}
    assert (tmp_path / "log").stat().st_size >= 20_000_000


def test_the_steps_do_not_read_bashrc_again_as_bash_does_for_a_shell_it_thinks_sshd_started(tmp_path):
    # The driver, started in the background of an ssh command, inherits SSH_CLIENT and SHLVL=0
    home, run_dir, reads = tmp_path / "home", tmp_path / "run", tmp_path / "bashrc-was-read"
    home.mkdir()
    run_dir.mkdir()
    (home / ".bashrc").write_text(f"echo read >> {reads}\n")
    steps = [{"name": name, "title": name, "command": "true"} for name in ("first", "second")]
    (run_dir / "run.json").write_text(json.dumps({"run_id": "bashrc", "steps": steps}))
    subprocess.run([sys.executable, str(REPO / "evalkit" / "remote" / "job.py"), "drive", "--run-dir", str(run_dir)],
                   env={**os.environ, "HOME": str(home), "SSH_CLIENT": "127.0.0.1 50000 22", "SHLVL": "0"},
                   stdin=subprocess.DEVNULL, check=True, timeout=60)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "succeeded"
    assert not reads.exists()


def test_an_evaluation_refused_before_its_run_starts_leaves_no_run_and_no_starter(testbed, tmp_path):
    missing = tmp_path / "experiments" / "nope" / "checkpoints" / "epoch_latest.pt"
    run = subprocess.run([sys.executable, str(ENTRY_SCRIPT), "--config", str(testbed.config),
                          "--model-path", str(missing)], capture_output=True, text=True, timeout=120)
    assert run.returncode == MissingInput.exit_code, run.stderr
    assert not run_dirs(testbed)
    assert_no_starter_left(testbed)


def test_the_starter_runs_evalkits_checks_in_its_env_and_without_a_run_ends_quietly(tmp_path):
    # remote/job.py start: begun before the client knows the run, it answers the checks first
    script = tmp_path / "helper.py"
    script.write_text("import os, sys; print(sys.argv[1], os.environ['MARK'], os.environ['PYTHONPATH'].split(os.pathsep)[0],"
                      " sys.path[1]); sys.stderr.write('to stderr'); sys.exit(3)")
    helpers = {"one": {"script": str(script), "args": ["x; touch pwned"], "env": {"MARK": "marked"},
                       "pythonpath": [str(tmp_path / "lib")]}}
    done = subprocess.run([sys.executable, str(REPO / "evalkit" / "remote" / "job.py"), "start"],
                          input=json.dumps({"helpers": helpers}) + "\n", capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("EVALKIT-JOB ")]
    assert json.loads(line.removeprefix("EVALKIT-JOB "))["helpers"]["one"] == {
        "exit_code": 3, "stdout": f"x; touch pwned marked {tmp_path / 'lib'} {tmp_path / 'lib'}\n",
        "stderr": "to stderr"}
    assert not list(tmp_path.rglob("pwned")) and not list(tmp_path.rglob("run.json"))


def test_the_starter_streams_the_runs_events_then_answers_its_collect_and_ends_with_its_stdin(tmp_path):
    # after the launch the starter's channel is the run's event stream: the client reads each
    # step's start, output and end as the server writes them, and asks for the results on it
    run_dir = tmp_path / "run"
    steps = [{"name": "first", "title": "first", "command": "echo one"},
             {"name": "second", "title": "second", "command": "echo two >&2"}]
    starter = subprocess.Popen([sys.executable, str(REPO / "evalkit" / "remote" / "job.py"), "start"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    starter.stdin.write(json.dumps({"run_dir": str(run_dir), "run": {"run_id": "events", "steps": steps}}) + "\n")
    starter.stdin.flush()
    try:
        answer, seen = starter.stdout.readline(), []
        while not seen or seen[-1]["e"] != "end":
            line = starter.stdout.readline()
            assert line.startswith("EVALKIT-EVENT "), line
            if json.loads(line.removeprefix("EVALKIT-EVENT "))["e"] != "beat":
                seen.append(json.loads(line.removeprefix("EVALKIT-EVENT ")))
        starter.stdin.write(json.dumps({"collect": [str(run_dir / "step-0.out"), str(run_dir / "nothing")]}) + "\n")
        starter.stdin.flush()
        bundle = json.loads(starter.stdout.readline().removeprefix("EVALKIT-EVENT "))
        starter.stdin.close()  # what closing the channel does
        assert starter.wait(timeout=10) == 0
    finally:
        starter.kill()
    assert json.loads(answer.removeprefix("EVALKIT-JOB "))["driver"]["pid"] > 0
    assert [(e["e"], e.get("step"), e.get("stream"), e.get("b64"), e.get("code")) for e in seen] == [
        ("started", 0, None, None, None), ("output", 0, "stdout", "b25lCg==", None), ("ended", 0, None, None, 0),
        ("started", 1, None, None, None), ("output", 1, "stderr", "dHdvCg==", None), ("ended", 1, None, None, 0),
        ("end", None, None, None, None)]
    assert seen[-1]["status"]["state"] == "succeeded"
    assert bundle["e"] == "bundle" and bundle["files"][str(run_dir / "nothing")] is None
    assert bundle["files"][str(run_dir / "step-0.out")]["b64"] == "b25lCg=="


def test_a_detached_client_leaves_the_starter_to_end_and_the_driver_to_go_on(tmp_path):
    run_dir = tmp_path / "run"
    steps = [{"name": "slow", "title": "slow", "command": f"sleep 1 && touch {tmp_path / 'done'}"}]
    starter = subprocess.Popen([sys.executable, str(REPO / "evalkit" / "remote" / "job.py"), "start"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    starter.stdin.write(json.dumps({"run_dir": str(run_dir), "run": {"run_id": "gone", "steps": steps}}) + "\n")
    starter.stdin.flush()
    assert starter.stdout.readline().startswith("EVALKIT-JOB ")
    starter.stdin.close()  # what closing the channel does
    assert starter.wait(timeout=10) == 0
    deadline = time.monotonic() + 30
    while not (run_dir / "status.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "succeeded"
    assert (tmp_path / "done").exists()


BOOTSTRAP = (REPO / "evalkit" / "remote" / "bootstrap.py").read_text()


def _bootstrap(folder: Path, stdin: str) -> list[str]:
    """remote/bootstrap.py as the starter's command runs it: inline, then FOLDER/hello.py."""
    done = subprocess.run([sys.executable, "-u", "-c", BOOTSTRAP, str(folder), "hello.py", "an argument"],
                          input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


HELLO = "import sys; print('hello', sys.argv[1:], sys.stdin.readline().strip())\n"
OTHER = "# another helper\n"


def _digests(files: dict[str, str]) -> str:
    return json.dumps({"files": {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()}})


def test_the_bootstrap_writes_what_the_server_lacks_then_runs_the_script_on_the_rest_of_stdin(tmp_path):
    folder = tmp_path / "fresh server" / ".evalkit"
    files = {"hello.py": HELLO, "other.py": OTHER}
    lines = _bootstrap(folder, _digests(files) + "\n" + json.dumps({"files": files}) + "\nthe rest\n")
    assert lines == ['EVALKIT-JOB {"missing": ["hello.py", "other.py"]}',
                     'EVALKIT-JOB {"written": ["hello.py", "other.py"]}',
                     "hello ['an argument'] the rest"]
    assert {p.name: p.read_text() for p in folder.iterdir()} == files  # and no temporary file left


def test_the_bootstrap_asks_only_for_scripts_that_differ(tmp_path):
    folder = tmp_path / ".evalkit"
    folder.mkdir()
    (folder / "hello.py").write_text(HELLO)
    (folder / "other.py").write_text("# an older evalkit's\n")
    before = (folder / "hello.py").stat().st_mtime_ns
    files = {"hello.py": HELLO, "other.py": OTHER}
    lines = _bootstrap(folder, _digests(files) + "\n" + json.dumps({"files": {"other.py": OTHER}}) + "\nmore\n")
    assert lines[:2] == ['EVALKIT-JOB {"missing": ["other.py"]}', 'EVALKIT-JOB {"written": ["other.py"]}']
    assert (folder / "other.py").read_text() == OTHER and (folder / "hello.py").stat().st_mtime_ns == before
    assert _bootstrap(folder, _digests(files) + "\nagain\n") == [
        'EVALKIT-JOB {"missing": []}', "hello ['an argument'] again"]
