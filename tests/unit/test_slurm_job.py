"""Slurm, pure: the `slurm:` config section, the job script, sbatch's, squeue's and sacct's answers read,
what each ending means, and the backoff between squeue calls."""
from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
from pathlib import Path

import pytest

from evalkit import slurm_job
from evalkit.config import Settings, SlurmSettings, build_settings
from evalkit.diagnosis import Check
from evalkit.errors import ConfigError
from evalkit.plan import build_plan
from evalkit.evaluation import Evaluation
from evalkit.run_record import RunRecord, new_record
from evalkit.server import scripts_dir, upstream_call

RUN_DIR = "/data/evalkit/.evalkit/runs/20260101-000000-abc123"


def settings(**slurm) -> Settings:
    return Settings(executor="slurm", slurm=SlurmSettings(**slurm))


# --- the config section ------------------------------------------------------------------------

def test_the_slurm_section_becomes_typed_settings(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("executor: slurm\nslurm:\n  partition: a100\n  gpus_per_job: 2\n  time: '1-00:00:00'\n"
                      "  sbatch_args: ['--mem=64G']\n  setup: ['module load cuda/12.1']\n", encoding="utf-8")
    got = build_settings(config, {})
    assert got.executor == "slurm"
    assert got.slurm == SlurmSettings(partition="a100", gpus_per_job=2, time="1-00:00:00",
                                      sbatch_args=("--mem=64G",), setup=("module load cuda/12.1",))
    assert build_settings(None, {}).slurm == SlurmSettings()  # defaults: 1 GPU, 04:00:00
    assert build_settings(None, {"executor": "slurm"}).executor == "slurm"


@pytest.mark.parametrize("section, names", [
    ({"partiton": "gpu"}, "unknown key 'partiton'"),
    ({"gpus_per_job": "2"}, "'gpus_per_job'"),
    ({"gpus_per_job": True}, "'gpus_per_job'"),
    ({"gpus_per_job": -1}, "'gpus_per_job'"),
    ({"time": "four hours"}, "not a Slurm time limit"),
    ({"partition": "gpu; rm -rf /"}, "not a Slurm name"),
    ({"sbatch_args": "--mem=1G"}, "a list of strings"),
    ({"setup": [1]}, "a list of strings"),
    ({"poll_max": 0}, "must be positive"),
])
def test_a_wrong_slurm_value_is_one_sentence_naming_it(tmp_path, section, names):
    config = tmp_path / "c.yaml"
    config.write_text(__import__("json").dumps({"executor": "slurm", "slurm": section}), encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        build_settings(config, {})
    assert names in raised.value.message and str(config) in raised.value.message


@pytest.mark.parametrize("key", ["sbatch_args", "setup"])
def test_a_block_scalar_item_of_several_lines_is_refused_before_it_reaches_the_batch_script(tmp_path, key):
    # `- |` keeps both lines in one item: in the script the second is a shell line, and sbatch
    # stops reading #SBATCH at the first one, ignoring every option after it without a word
    config = tmp_path / "c.yaml"
    config.write_text(f"executor: slurm\nslurm:\n  {key}:\n    - |\n      --mem=64G\n      --constraint=a100\n",
                      encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        build_settings(config, {})
    assert raised.value.message == (f"slurm {key!r} in {config} has an item of several lines: "
                                    "'--mem=64G\\n--constraint=a100\\n'")
    assert "its own item" in raised.value.hint


def test_a_run_record_keeps_the_slurm_section():
    chosen = settings(partition="gpu", setup=("module load cuda",))
    evaluation = Evaluation(checkpoint="/data/ckpt.pt", dataset="Flickr30k-CN", split="valid", label="team",
                            vision_model="RN50", text_model="RBT3-chinese")
    record = new_record(chosen, evaluation, build_plan(chosen, evaluation), "r1", RUN_DIR)
    assert RunRecord.from_json(record.to_json()).settings.slurm == chosen.slurm


def test_under_slurm_the_steps_never_choose_the_gpu():
    assert ("CUDA_VISIBLE_DEVICES", "3") in upstream_call(Settings(gpu=3), "x.py", []).env
    assert upstream_call(dataclasses.replace(settings(), gpu=3), "x.py", []).env == ()


# --- the job script ------------------------------------------------------------------------------

@pytest.mark.parametrize("slurm, present, absent", [
    ({}, ["#SBATCH --gres=gpu:1", "#SBATCH --time=04:00:00"], ["--partition", "--account", "--qos"]),
    ({"partition": "a100", "account": "lab", "qos": "high"},
     ["#SBATCH --partition=a100", "#SBATCH --account=lab", "#SBATCH --qos=high"], []),
    ({"gpus_per_job": 0}, [], ["--gres"]),
    ({"gpus_per_job": 4, "time": "30"}, ["#SBATCH --gres=gpu:4", "#SBATCH --time=30"], []),
    ({"sbatch_args": ("--mem=64G", "#SBATCH --constraint=a100")},
     ["#SBATCH --mem=64G", "#SBATCH --constraint=a100"], ["#SBATCH #SBATCH"]),
])
def test_the_job_script_carries_slurms_options(slurm, present, absent):
    script = batch_script(settings(**slurm))
    for line in present:
        assert line in script.splitlines()
    for text in absent:
        assert text not in script
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash -l" and "#SBATCH --job-name=evalkit-r1-team" in lines
    assert "#SBATCH --signal=B:TERM@120" in lines and "#SBATCH --export=NONE" in lines
    assert "export PYTHONUNBUFFERED=1" in lines
    # every #SBATCH line comes before the first command, or sbatch ignores it
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))


EXPECTED = {"job.py": "a" * 64}


def batch_script(chosen) -> str:
    return slurm_job.batch_script(chosen, "r1", "team", RUN_DIR, "BOOTSTRAP SOURCE", EXPECTED)


def test_the_job_starts_its_driver_only_through_the_check_of_the_scripts_folder_as_submitted():
    [drive] = [line for line in batch_script(settings()).splitlines() if "job.py drive" in line]
    argv = shlex.split(drive.rstrip(" &").split(" && ")[-1])
    assert argv[argv.index("-c"):] == ["-c", "BOOTSTRAP SOURCE", "--expect", json.dumps(EXPECTED),
                                       "--refusal-to", f"{RUN_DIR}/status.json", scripts_dir(settings()), "job.py", "drive",
                                       "--run-dir", RUN_DIR]


def test_setup_lines_come_before_activate_and_the_driver_runs_in_the_run_folder():
    chosen = dataclasses.replace(settings(setup=("module load cuda",)), activate="source /env/bin/activate")
    lines = batch_script(chosen).splitlines()
    setup = lines.index("module load cuda")
    [drive] = [line for line in lines if "job.py drive" in line]
    assert setup < lines.index(drive) and drive.startswith("source /env/bin/activate && ")
    assert shlex.split(drive.rstrip(" &").split(" && ")[-1])[-3:] == ["drive", "--run-dir", RUN_DIR]


@pytest.mark.parametrize("run_id, label, name", [
    ("r1", "team", "evalkit-r1-team"),
    ("r1", "EXP@epoch_5", "evalkit-r1-EXP@epoch_5"),
    ("r1", "蒸馏 模型", "evalkit-r1-_____"),
    ("r1", "a'b;c", "evalkit-r1-a_b_c"),
])
def test_job_names_are_safe(run_id, label, name):
    assert slurm_job.job_name(run_id, label) == name


def test_the_batch_shell_outlives_slurms_warning_and_exits_with_the_drivers_status(tmp_path):
    """The script's tail, run by bash: a TERM (Slurm's warning before the time limit) is noted and
    the driver goes on; the script exits with the driver's own status."""
    run_dir = tmp_path / "run dir"
    run_dir.mkdir()
    drive = "sleep 0.5; exit 3"
    script = slurm_job.job_script(settings(), "evalkit-x", str(run_dir), f"( {drive} )")
    path = tmp_path / "job.sh"
    path.write_text(script.replace("#!/bin/bash -l", "#!/bin/bash"))
    child = subprocess.Popen(["bash", str(path)])
    import time
    time.sleep(0.2)
    child.terminate()
    assert child.wait(timeout=10) == 3
    assert (run_dir / slurm_job.SIGNALLED_NAME).read_text().startswith("20")


# --- sbatch and squeue ----------------------------------------------------------------------------

@pytest.mark.parametrize("stdout, job_id", [
    ("42\n", "42"), ("42;cluster\n", "42"), ("", None), ("Submitted batch job 42\n", None),
    ("sbatch: warning: x\n43\n", "43"),
    # a site's wrapper or submit plugin: a notice after the id, or before and after it
    ("44\nNOTICE: jobs under 1 h get the short queue\n", "44"),
    ("NOTICE: charged to lab\n45;hpc\nRemember: cite the cluster (2024)\n", "45"),
    ("46\n47\n", None),  # which one is ours? the queue is asked, by the job's name
])
def test_sbatch_parsable_output_among_notices(stdout, job_id):
    from evalkit.remote import run_start
    assert run_start.submitted_job_id(stdout) == job_id


def test_sbatch_writes_the_jobs_output_into_the_run_folder():
    assert slurm_job.sbatch_argv(RUN_DIR + "/") == ["sbatch", "--parsable", f"--output={RUN_DIR}/slurm-%j.out",
                                                   f"--error={RUN_DIR}/slurm-%j.out"]


def test_one_squeue_for_all_jobs():
    assert slurm_job.squeue_argv(["1", "2"]) == ["squeue", "--noheader", "--states=all", "--jobs=1,2",
                                                 "--format=%i|%T|%r"]


@pytest.mark.parametrize("text, expected", [
    ("", {}),
    ("7|PENDING|Resources\n", {"7": ("PENDING", "Resources", True, "PENDING (Resources)")}),
    ("7|RUNNING|None\n8|PENDING|QOSMaxGRESPerUser\n", {
        "7": ("RUNNING", "None", True, "RUNNING"),
        "8": ("PENDING", "QOSMaxGRESPerUser", True, "PENDING (QOSMaxGRESPerUser)")}),
    ("9|TIMEOUT|TimeLimit\n", {"9": ("TIMEOUT", "TimeLimit", False, "TIMEOUT (TimeLimit)")}),
    ("9|CANCELLED by 0|None\n", {"9": ("CANCELLED", "None", False, "CANCELLED")}),
    ("garbage\n10|COMPLETED|None\n", {"10": ("COMPLETED", "None", False, "COMPLETED")}),
])
def test_squeue_lines(text, expected):
    found = slurm_job.parse_squeue(text)
    assert {job: (e.state, e.reason, e.is_active, e.describe()) for job, e in found.items()} == expected


@pytest.mark.parametrize("state, reason, says, fix", [
    ("TIMEOUT", "TimeLimit", "ended TIMEOUT, reason TimeLimit: it ran past its time limit (00:30:00)",
     "raise slurm.time in the config file (now 00:30:00)"),
    ("OUT_OF_MEMORY", "OutOfMemory", "ran out of memory", "--mem="),
    ("NODE_FAIL", "None", "ended NODE_FAIL: its node failed", "admins"),
    ("PREEMPTED", "None", "higher priority", "without preemption"),
    ("CANCELLED", "None", "cancelled by someone else", "evaluate again"),
    # cancelled while it waited: Slurm keeps the waiting reason, which is not why it ended
    ("CANCELLED", "Priority", "ended CANCELLED: it was cancelled by someone else", "evaluate again"),
    ("FAILED", "NonZeroExitCode", "batch script failed", "/o/slurm-9.out"),
    ("WEIRD", "None", "Slurm ended it with state WEIRD", "/o/slurm-9.out"),
])
def test_each_ending_is_named_with_its_fix(state, reason, says, fix):
    message, hint = slurm_job.ending(slurm_job.QueueEntry("9", state, reason), SlurmSettings(time="00:30:00"),
                                     "/o/slurm-9.out")
    assert message.startswith(f"Slurm job 9 ended {state}") and says in message
    assert fix in hint


def test_sacct_is_asked_for_the_jobs_alone_in_squeues_three_fields():
    assert slurm_job.sacct_argv(["7", "8"]) == ["sacct", "--noheader", "--parsable2", "--allocations", "--jobs=7,8",
                                                "--format=JobID,State,Reason"]


@pytest.mark.parametrize("code, stdout, stderr, expected", [
    # a cluster without accounting (the test bed's): squeue is all there is
    (1, "", "Slurm accounting storage is disabled\n", None),
    (0, "Slurm accounting storage is disabled\n", "", None),
    (1, "", "sacct: error: Problem talking to the database: Connection refused\n", None),
    (0, "", "", {}),
    (0, "7|TIMEOUT|TimeLimit\n", "", {"7": ("TIMEOUT", "TimeLimit", False, "TIMEOUT (TimeLimit)")}),
    (0, "7|CANCELLED by 1000|None\n7.batch|CANCELLED|None\n7.extern|COMPLETED|None\n", "",
     {"7": ("CANCELLED", "None", False, "CANCELLED")}),
    (0, "8|OUT_OF_MEMORY|OutOfMemory\n9|RUNNING|None\n", "", {
        "8": ("OUT_OF_MEMORY", "OutOfMemory", False, "OUT_OF_MEMORY (OutOfMemory)"),
        "9": ("RUNNING", "None", True, "RUNNING")}),
    (0, "garbage\n10_1|COMPLETED|None\n|||\n", "", {}),
])
def test_sacct_lines(code, stdout, stderr, expected):
    found = slurm_job.parse_sacct(code, stdout, stderr)
    assert (None if found is None else
            {job: (e.state, e.reason, e.is_active, e.describe()) for job, e in found.items()}) == expected


def test_squeue_backs_off_from_poll_interval_to_poll_max():
    slurm, pause, pauses = SlurmSettings(), 0.0, []
    for _ in range(6):
        pause = slurm_job.next_pause(pause, slurm)
        pauses.append(pause)
    assert pauses == [5, 10, 20, 40, 60, 60]


# --- doctor ---------------------------------------------------------------------------------------

FOUND = "/usr/bin/sbatch\n/usr/bin/squeue\n/usr/bin/scancel\n/usr/bin/sinfo\n/usr/bin/scontrol\n"
UP = (0, "Slurmctld(primary) at login1 is UP\n")
SINFO = (0, "cpu*|40|(null)|up\na100|8|gpu:a100:4(S:0-1)|up\nold|2|gpu:1|down\n")


@pytest.mark.parametrize("found, ping, partitions, slurm, failing, says", [
    (FOUND, UP, SINFO, SlurmSettings(partition="a100"), [], "partition a100: 8 nodes, GPUs per node: gpu:a100:4"),
    ("/usr/bin/sinfo\n", UP, SINFO, SlurmSettings(partition="a100"), ["Slurm commands"],
     "sbatch, squeue, scancel, scontrol not found"),
    (FOUND, (1, "slurm_load_ctl_conf error\n"), SINFO, SlurmSettings(partition="a100"), ["Slurm answers"],
     "slurm_load_ctl_conf error"),
    (FOUND, UP, SINFO, SlurmSettings(partition="h100"), ["Slurm partition"], "h100 does not exist (partitions: a100, cpu, old)"),
    (FOUND, UP, SINFO, SlurmSettings(), ["Slurm partition"], "at most 0 GPUs per node"),  # the default: cpu
    (FOUND, UP, SINFO, SlurmSettings(gpus_per_job=0), [], "partition cpu: 40 nodes"),
    (FOUND, UP, SINFO, SlurmSettings(partition="a100", gpus_per_job=8), ["Slurm partition"], "at most 4 GPUs"),
    (FOUND, UP, SINFO, SlurmSettings(partition="old"), ["Slurm partition"], "partition old is down"),
    (FOUND, UP, (1, ""), SlurmSettings(partition="a100"), ["Slurm partition"], "sinfo listed no partition"),
])
def test_the_doctors_slurm_lines(found, ping, partitions, slurm, failing, says):
    lines = slurm_job.doctor_checks(found, ping, partitions, slurm)
    assert [check.name for check in lines] == ["Slurm commands", "Slurm answers", "Slurm partition"]
    assert [check.name for check in lines if not check.ok] == failing
    assert all(check.fix for check in lines if not check.ok)
    assert any(says in check.found for check in lines)


def test_the_probe_job_asks_for_what_the_evaluations_jobs_ask():
    command = slurm_job.probe_job_command(settings(partition="a100", account="lab", gpus_per_job=2),
                                          ["/data", "/with space"])
    srun = shlex.join(["srun", "--immediate=120", "--time=5", "--job-name=evalkit-doctor", "--partition=a100",
                       "--gres=gpu:2", "--account=lab", "bash", "-c", slurm_job.PROBE_SCRIPT, "evalkit-probe"])
    assert f'{srun} "$lock" /data \'/with space\'' in command


# srun as the probe job meets it: its options dropped, the job's command run here; UNSHARED: the
# compute node sees another filesystem, where the login node's lock file is not
FAKE_SRUN = """#!/bin/bash
while [[ $1 == --* ]]; do shift; done
[ -n "$UNSHARED" ] && mv -- "$5" "$5.elsewhere"
"$@"; code=$?
[ -n "$UNSHARED" ] && mv -- "$5.elsewhere" "$5"
exit $code
"""


def _probe(tmp_path, unshared: bool) -> subprocess.CompletedProcess:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text(FAKE_SRUN)
    (tmp_path / "bin" / "srun").chmod(0o755)
    (tmp_path / ".evalkit").mkdir()
    (tmp_path / "with space").mkdir()
    chosen = dataclasses.replace(settings(), remote_output_dir=str(tmp_path))
    command = slurm_job.probe_job_command(chosen, [str(tmp_path), str(tmp_path / "with space")])
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                          env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "1",
                               **({"UNSHARED": "1"} if unshared else {})})


def test_the_probe_jobs_script_stats_each_path_tries_the_lock_then_says_which_gpus_it_got(tmp_path):
    seen = _probe(tmp_path, unshared=False)
    lines = seen.stdout.splitlines()
    assert seen.returncode == 0 and lines[:3] == [str(tmp_path), str(tmp_path / "with space"), "LOCK=held"]
    assert "CUDA_VISIBLE_DEVICES=1" in lines
    check = slurm_job.lock_check(seen.stdout)
    assert check.ok and check.name == "Slurm lock across nodes", check
    assert list((tmp_path / ".evalkit").iterdir()) == []  # the probe's lock files are gone


def test_a_lock_a_compute_node_does_not_see_fails_the_doctors_lock_line(tmp_path):
    seen = _probe(tmp_path, unshared=True)
    assert seen.returncode == 0 and "LOCK=made again" in seen.stdout.splitlines()
    check = slurm_job.lock_check(seen.stdout)
    assert not check.ok and "two runs of one checkpoint could both start" in check.found and check.fix


@pytest.mark.parametrize("node, ok, says", [
    (1000, True, "within 1 s"),
    (1003, True, "within 1 s"),  # while the job ran: the login node's clock read before and after it
    (1003 + slurm_job.CLOCK_TOLERANCE, True, f"within {slurm_job.CLOCK_TOLERANCE} s"),
    (1004 + slurm_job.CLOCK_TOLERANCE, False, f"{slurm_job.CLOCK_TOLERANCE + 1} s off"),
    (1000 - 60, False, "60 s off"),
])
def test_the_doctors_lock_line_judges_the_compute_nodes_clock(node, ok, says):
    check = slurm_job.lock_check(f"LOCK=held\nCLOCK={node}\nLOGIN_CLOCK=1000 1003\n")
    assert check.ok is ok and says in check.found, check


def test_no_lock_line_when_the_probe_job_did_not_get_that_far():
    assert slurm_job.lock_check("") is None


def test_the_clock_tolerance_is_well_within_the_locks_lease():
    from evalkit.remote import run_lock
    assert slurm_job.CLOCK_TOLERANCE * 4 <= run_lock.LEASE_SECONDS


LOGIN_GPU = Check("GPU", False, "torch sees no CUDA GPU with CUDA_VISIBLE_DEVICES=0", "pick a free GPU")
PARTITION_OK = Check("Slurm partition", True, "partition a100: 8 nodes, GPUs per node: gpu:a100:4")
PARTITION_BAD = Check("Slurm partition", False, "nosuch does not exist (partitions: a100)", "set slurm.partition")


@pytest.mark.parametrize("device, partition, seen_by_job, ok, says", [
    # the login node's own GPU is not the compute nodes': without the probe job, the partition's
    ("cuda", PARTITION_OK, None, True, "on the compute nodes (sinfo), not this login node: partition a100"),
    ("cuda", PARTITION_BAD, None, False, "nosuch does not exist"),
    # with --probe-job, what nvidia-smi showed the job on a compute node
    ("cuda", PARTITION_OK, "/data\nCUDA_VISIBLE_DEVICES=2\nGPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-1)\n", True,
     "a job on a compute node got CUDA_VISIBLE_DEVICES=2: GPU 0: NVIDIA A100-SXM4-80GB"),
    ("cuda", PARTITION_OK, "/data\nCUDA_VISIBLE_DEVICES=0\n", False, "but nvidia-smi there lists no GPU"),
    ("cpu", PARTITION_OK, None, False, "torch sees no CUDA GPU"),  # --device cpu: the probe's own line
])
def test_the_doctors_gpu_line_under_slurm_is_the_compute_nodes(device, partition, seen_by_job, ok, says):
    check = slurm_job.compute_node_gpu_check(LOGIN_GPU, partition, seen_by_job,
                                             dataclasses.replace(settings(), device=device))
    assert (check.name, check.ok) == ("GPU", ok) and says in check.found
    assert bool(check.fix) != ok


@pytest.mark.parametrize("code, stderr, ok, says", [
    (0, "", True, "a job on a compute node sees /data, /clip"),
    (1, "stat: cannot statx '/data': No such file or directory\n", False, "cannot statx '/data'"),
    (1, "srun: error: Unable to allocate resources: Requested node configuration is not available\n", False,
     "Unable to allocate resources"),
])
def test_the_probe_jobs_line(code, stderr, ok, says):
    check = slurm_job.probe_job_check(code, "", stderr, ["/data", "/clip"])
    assert (check.name, check.ok) == ("Slurm probe job", ok) and says in check.found
    assert bool(check.fix) != ok
