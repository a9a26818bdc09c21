"""Every test runs as a stranger to this machine's user: own HOME, no ssh agent, no ~/.ssh."""
import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for variable in ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(variable, raising=False)
    return home


# The slowest test files on CI (its --durations), handed out first. xdist's --dist loadfile gives
# each worker whole files in the order of this list, then in collection order; by default it
# would sort files by their number of tests, so these few-but-long files came last and one of
# them ran alone on one worker for minutes while the others idled.
SLOWEST_FIRST = tuple(f"integration/{name}" for name in (
    "test_slurm.py", "test_zeroshot.py", "test_sweeps.py", "test_training_folders.py",
    "test_what_people_see.py", "test_watch.py", "test_comparison.py", "test_step_flow.py",
    "test_detached.py", "test_end_to_end.py", "test_provenance.py", "test_hardening.py",
    "test_step_by_step.py"))


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order given below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(f"{item.path.parent.name}/{item.path.name}", len(rank)))  # stable
