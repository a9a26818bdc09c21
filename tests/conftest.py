"""Every test runs as a stranger to this machine's user: own HOME, no ssh agent, no ~/.ssh."""
import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for variable in ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(variable, raising=False)
    return home
