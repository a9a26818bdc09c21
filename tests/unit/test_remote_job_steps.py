"""The driver's steps (remote/job.py run_steps): a step marked beside_rest runs beside the steps
after it, and evalkit's own commands beside the steps (the provenance) never delay them."""
import os
import time

from evalkit.remote import job


def steps(*commands, beside_first=True):
    return [{"name": f"s{i}", "command": command, "beside_rest": beside_first and i == 0}
            for i, command in enumerate(commands)]


def test_a_step_beside_the_rest_runs_at_the_same_time_as_them_and_all_are_recorded(tmp_path):
    started = time.monotonic()
    state, details = job.run_steps(str(tmp_path), steps("sleep 1; echo hits", "sleep 0.5; echo t2i",
                                                        "sleep 0.5; echo i2t"))
    assert time.monotonic() - started < 1.9  # the first after the others would take 2 s
    assert (state, details) == ("succeeded", {})
    assert [(tmp_path / f"step-{i}.exit").read_text().split()[0] for i in (0, 1, 2)] == ["0", "0", "0"]
    assert [(tmp_path / f"step-{i}.out").read_text() for i in (0, 1, 2)] == ["hits\n", "t2i\n", "i2t\n"]


def test_a_failed_step_beside_the_rest_fails_the_run_once_they_have_ended(tmp_path):
    state, details = job.run_steps(str(tmp_path), steps("exit 3", "sleep 0.2", "echo after"))
    assert (state, details["failed_step"]) == ("failed", 0)
    assert [(tmp_path / f"step-{i}.exit").exists() for i in (1, 2)] == [True, True]  # they ran to their end


def test_a_step_after_one_beside_the_rest_that_fails_ends_the_steps_and_both_are_waited_for(tmp_path):
    state, details = job.run_steps(str(tmp_path), steps("sleep 0.3; echo hits", "exit 2", "echo after"))
    assert (state, details["failed_step"]) == ("failed", 1)
    assert (tmp_path / "step-0.exit").exists() and not (tmp_path / "step-2.started").exists()


def test_the_first_failed_step_by_index_is_the_runs(tmp_path):
    state, details = job.run_steps(str(tmp_path), steps("sleep 0.3; exit 1", "exit 2"))
    assert (state, details["failed_step"]) == ("failed", 0)


def test_a_last_step_marked_beside_rest_simply_runs(tmp_path):
    assert job.run_steps(str(tmp_path), steps("echo only")) == ("succeeded", {})


def test_commands_beside_the_steps_are_waited_for_after_a_success_and_stopped_after_a_failure(tmp_path):
    ok, failed = tmp_path / "ok", tmp_path / "failed"
    for folder in (ok, failed):
        folder.mkdir()
    running = job.start_beside(str(ok), [{"name": "provenance", "command": "sleep 0.3; echo facts"}])
    job.end_beside(running, keep=True)
    assert (ok / "beside-provenance.out").read_text() == "facts\n"
    assert (ok / "beside-provenance.exit").read_text() == "0\n"
    child_file = failed / "child"
    running = job.start_beside(str(failed), [{"name": "provenance",
                                              "command": f"sleep 30 & echo $! > {child_file}.tmp; mv {child_file}.tmp "
                                                         f"{child_file}; wait"}])
    deadline = time.monotonic() + 10
    while not child_file.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    job.end_beside(running, keep=False)
    assert time.monotonic() - started < 5 and not (failed / "beside-provenance.exit").exists()
    time.sleep(0.1)
    child = int(child_file.read_text())
    assert not os.path.exists(f"/proc/{child}") or "Z" in open(f"/proc/{child}/stat").read().split(")")[1][:3]
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # only the command beside runs at a low priority
