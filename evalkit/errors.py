"""The one exception hierarchy of evalkit, and the exit code each kind of failure maps to.

Domain code raises these; only the CLI edge prints them and exits (cli/guard.py, `guarded`).
Every message says what failed, which thing, and how to fix it.
"""
from __future__ import annotations


class EvalkitError(Exception):
    """Root of every failure evalkit reports to the user."""

    exit_code = 1
    title = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(EvalkitError):
    """A config file or option value is wrong (unknown key, wrong type, malformed YAML)."""

    exit_code = 3
    title = "config error"


class ConnectError(EvalkitError):
    """The server could not be reached (DNS, refused, timeout, ssh config)."""

    exit_code = 4
    title = "cannot connect"


class AuthenticationError(EvalkitError):
    """The server refused every key we offered."""

    exit_code = 5
    title = "authentication failed"


class HostKeyError(EvalkitError):
    """The server's host key is unknown or differs from known_hosts."""

    exit_code = 6
    title = "host key not trusted"


class RemoteStepFailed(EvalkitError):
    """An upstream script exited non-zero (or produced no result)."""

    exit_code = 7
    title = "remote step failed"


class EvaluationFailed(EvalkitError):
    """Upstream evaluation.py exited 0 but wrote `success: false`, or an unreadable result."""

    exit_code = 8
    title = "evaluation failed"


class ConnectionLost(EvalkitError):
    """The SSH connection dropped or a step exceeded its time limit."""

    exit_code = 9
    title = "connection lost"


class LocalWriteError(EvalkitError):
    """The results could not be written on this machine."""

    exit_code = 10
    title = "cannot write results"


class DemoSetupError(EvalkitError):
    """`python -m evalkit demo` could not build its local server."""

    exit_code = 11
    title = "demo setup failed"


class MissingInput(EvalkitError):
    """A dataset split or checkpoint the command names is not on the server."""

    exit_code = 12
    title = "not on the server"


class OutputsNotReady(EvalkitError):
    """A step's inputs are missing, incomplete, or not from one extraction of one checkpoint."""

    exit_code = 13
    title = "earlier step's output not usable"


class ComparisonIncomplete(EvalkitError):
    """In a run of several models, at least one failed (the others' results are kept)."""

    exit_code = 14
    title = "some models failed"


class NothingEvaluated(EvalkitError):
    """`python -m evalkit results` found no results to show."""

    exit_code = 15
    title = "no results"
class DoctorFailed(EvalkitError):
    """`python -m evalkit doctor` found at least one problem (each printed as a ✗ line)."""

    exit_code = 16
    title = "doctor found problems"


class PreflightFailed(EvalkitError):
    """A check run before extraction failed (dataset content, env, GPU memory, disk)."""

    exit_code = 17
    title = "not ready to extract"


class RunLocked(EvalkitError):
    """Another run is writing the same checkpoint directory on the server."""

    exit_code = 18
    title = "checkpoint busy"


class UnknownRun(EvalkitError):
    """attach / logs / cancel / status named a run this laptop has no record of."""

    exit_code = 19
    title = "unknown run"


class DriverGone(EvalkitError):
    """The run's driver on the server died (killed, OOM, reboot) or crashed: the run is over."""

    exit_code = 20
    title = "run lost on the server"


class TransferUnavailable(EvalkitError):
    """The server's SSH has no SFTP subsystem, which Slurm runs need."""

    exit_code = 21
    title = "no SFTP on the server"


class NotComparable(EvalkitError):
    """`results --strict`: rows of a comparison were made differently (dataset, context length, ...)."""

    exit_code = 22
    title = "rows not comparable"


class SlurmRefused(EvalkitError):
    """sbatch refused the job (no such partition, more GPUs than a node has, ...): nothing ran."""

    exit_code = 23
    title = "Slurm refused the job"


class SlurmJobEnded(EvalkitError):
    """Slurm ended the run's job (TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, CANCELLED, ...)."""

    exit_code = 24
    title = "Slurm ended the job"


class SlurmJobLost(EvalkitError):
    """The run's job left Slurm's queue and its files never said how the run ended."""

    exit_code = 25
    title = "Slurm job lost"


class ServerFileError(EvalkitError):
    """A file on the server could not be written (a full disk, a quota, an I/O error): the link is fine."""

    exit_code = 26
    title = "cannot write on the server"


INTERRUPTED_EXIT_CODE = 130
UNEXPECTED_EXIT_CODE = 1
USAGE_EXIT_CODE = 2

# The documented table (docs/exit-codes.md); tests/cli checks it stays in sync.
EXIT_CODES: dict[int, str] = {
    0: "success: every step exited 0 and both result JSONs say success: true",
    UNEXPECTED_EXIT_CODE: ("unexpected internal error (a bug: its traceback is kept in ~/.cache/evalkit/crashes/; "
                           "please report it)"),
    USAGE_EXIT_CODE: "bad command-line usage (unknown option, invalid choice)",
    ConfigError.exit_code: "config file or option value is wrong",
    ConnectError.exit_code: "the server could not be reached",
    AuthenticationError.exit_code: "the server refused authentication",
    HostKeyError.exit_code: "the server's host key is unknown or changed",
    RemoteStepFailed.exit_code: "an upstream step exited non-zero",
    EvaluationFailed.exit_code: "upstream evaluation reported success: false",
    ConnectionLost.exit_code: "the connection dropped or a step timed out",
    LocalWriteError.exit_code: "results could not be written locally",
    DemoSetupError.exit_code: "the demo could not build its local server",
    MissingInput.exit_code: "the dataset split or checkpoint is not on the server",
    OutputsNotReady.exit_code: "an earlier step's output is missing, incomplete or from another "
                               "checkpoint (run that step first)",
    ComparisonIncomplete.exit_code: "several models were evaluated and at least one failed "
                                    "(the table marks which)",
    NothingEvaluated.exit_code: "`python -m evalkit results` found no results for that filter",
    DoctorFailed.exit_code: "`evalkit doctor` found a problem (see its ✗ lines)",
    PreflightFailed.exit_code: "a check before extraction failed (texts, image ids, env, GPU memory, "
                               "disk): the message names it",
    RunLocked.exit_code: "another run is evaluating the same checkpoint (the message names it)",
    UnknownRun.exit_code: "no record of that run id on this laptop",
    DriverGone.exit_code: "the run's driver on the server died or crashed (killed, out of memory, reboot)",
    TransferUnavailable.exit_code: "the server's SSH has no SFTP subsystem (the message says how to enable it)",
    NotComparable.exit_code: "`results --strict`: rows of a comparison were made differently (the footnotes say how)",
    SlurmRefused.exit_code: "`sbatch` refused the job before anything ran (Slurm's message says why)",
    SlurmJobEnded.exit_code: "Slurm ended the job (TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, CANCELLED): "
                             "the message names the state and the fix",
    SlurmJobLost.exit_code: "the Slurm job left the queue and its run's files never said how it ended",
    ServerFileError.exit_code: "a file on the server could not be written (a full disk, a quota, an I/O error): "
                               "the message names the file, the disk and its free space",
    INTERRUPTED_EXIT_CODE: "interrupted (Ctrl-C)",
}
