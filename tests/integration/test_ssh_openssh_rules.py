"""OpenSSH's own rules for keys and known_hosts, against the real sshd and a real ssh-agent."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from evalkit.errors import AuthenticationError, HostKeyError
from evalkit.ssh import Connection, resolve_target

pytestmark = pytest.mark.integration

ALIAS = "srv"


def _keygen(path: Path, passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "", "-f", str(path)],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return path


def _write_config(sshd, ssh_dir: Path, identity: Path, *extra: str) -> Path:
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = ssh_dir / "config"
    lines = [f"Host {ALIAS}", f"  HostName {sshd.host}", f"  Port {sshd.port}", f"  User {sshd.user}",
             f'  IdentityFile "{identity}"', f'  UserKnownHostsFile "{ssh_dir / "known_hosts"}"', *extra]
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    return config


def _logs_in(config: Path) -> bool:
    with Connection(resolve_target(ALIAS, config), connect_timeout=10) as connection:
        return connection.capture("echo in", timeout=30)[:2] == (0, b"in\n")


@pytest.fixture
def agent(sshd, tmp_path, monkeypatch):
    """A real ssh-agent holding the key the server accepts; SSH_AUTH_SOCK points at it."""
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.skip("needs ssh-agent and ssh-add")
    sock = tmp_path / "agent.sock"
    process = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", str(sshd.user_key)], env=env, check=True, capture_output=True,
                       stdin=subprocess.DEVNULL)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        yield sock
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def ssh_dir(sshd, isolated_home) -> Path:
    folder = isolated_home / ".ssh"
    folder.mkdir(mode=0o700)
    (folder / "known_hosts").write_text(sshd.known_hosts_line() + "\n")
    return folder


# --- 1. IdentitiesOnly and IdentityAgent -------------------------------------------------------

def test_without_identities_only_the_agents_key_logs_in_as_ssh_would(sshd, agent, ssh_dir, tmp_path):
    config = _write_config(sshd, ssh_dir, _keygen(tmp_path / "wrong"))
    assert _logs_in(config)


@pytest.mark.parametrize("line", ["IdentitiesOnly yes", "IdentityAgent none"])
def test_identities_only_or_no_agent_keeps_the_agents_keys_back(sshd, agent, ssh_dir, tmp_path, line):
    config = _write_config(sshd, ssh_dir, _keygen(tmp_path / "wrong"), f"  {line}")
    with pytest.raises(AuthenticationError) as info:
        _logs_in(config)
    assert info.value.exit_code == 5
    assert f"{tmp_path / 'wrong'}" in info.value.hint
    assert line in info.value.hint  # says why the agent's key was not offered


def test_identities_only_still_lets_the_agent_sign_for_the_configured_key(sshd, agent, ssh_dir, tmp_path):
    # An encrypted IdentityFile whose key the agent holds: ssh signs with the agent, no passphrase.
    encrypted = tmp_path / "encrypted"
    shutil.copy(sshd.user_key, encrypted)
    shutil.copy(f"{sshd.user_key}.pub", f"{encrypted}.pub")
    encrypted.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-N", "secret", "-P", "", "-f", str(encrypted)],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    config = _write_config(sshd, ssh_dir, encrypted, "  IdentitiesOnly yes")
    assert _logs_in(config)


# --- 2. and 3. known_hosts as ssh reads it ------------------------------------------------------

def _other_key_line(tmp_path: Path, names: str, marker: str = "") -> str:
    public = Path(f"{_keygen(tmp_path / f'other-{len(list(tmp_path.iterdir()))}')}.pub").read_text().split()
    return " ".join(filter(None, [marker, names, public[0], public[1]]))


def _with_known_hosts(sshd, ssh_dir: Path, *lines: str) -> Path:
    (ssh_dir / "known_hosts").write_text("".join(f"{line}\n" for line in lines))
    return _write_config(sshd, ssh_dir, sshd.user_key, "  IdentitiesOnly yes")


def _name(sshd) -> str:
    return f"[{sshd.host}]:{sshd.port}"


def test_cert_authority_lines_are_skipped(sshd, ssh_dir, tmp_path):
    config = _with_known_hosts(sshd, ssh_dir, _other_key_line(tmp_path, "*", "@cert-authority"),
                               sshd.known_hosts_line())
    assert _logs_in(config)


def test_a_cert_authority_line_alone_does_not_vouch_for_a_plain_key(sshd, ssh_dir):
    config = _with_known_hosts(sshd, ssh_dir, f"@cert-authority * {sshd.host_key_line()}")
    with pytest.raises(HostKeyError, match="is not in known_hosts"):
        _logs_in(config)


def test_a_revoked_host_key_is_refused_and_named_revoked(sshd, ssh_dir):
    config = _with_known_hosts(sshd, ssh_dir, sshd.known_hosts_line(),
                               f"@revoked * {sshd.host_key_line()}")
    with pytest.raises(HostKeyError) as info:
        _logs_in(config)
    assert info.value.exit_code == 6
    assert "REVOKED" in info.value.message and f"{ssh_dir / 'known_hosts'}:2" in info.value.message


def test_a_stale_line_before_the_right_one_does_not_read_as_changed(sshd, ssh_dir, tmp_path):
    config = _with_known_hosts(sshd, ssh_dir, _other_key_line(tmp_path, _name(sshd)), sshd.known_hosts_line())
    assert _logs_in(config)


def test_only_wrong_lines_read_as_changed(sshd, ssh_dir, tmp_path):
    config = _with_known_hosts(sshd, ssh_dir, _other_key_line(tmp_path, _name(sshd)),
                               _other_key_line(tmp_path, f"{sshd.host},{_name(sshd)}"))
    with pytest.raises(HostKeyError) as info:
        _logs_in(config)
    assert "CHANGED" in info.value.message
    assert f"ssh-keygen -R '{_name(sshd)}'" in info.value.hint


def test_hashed_and_wildcard_lines_match_like_ssh(sshd, ssh_dir, tmp_path):
    config = _with_known_hosts(sshd, ssh_dir, sshd.known_hosts_line())
    subprocess.run(["ssh-keygen", "-H", "-f", str(ssh_dir / "known_hosts")], check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)
    assert (ssh_dir / "known_hosts").read_text().startswith("|1|")
    assert _logs_in(config)
    _with_known_hosts(sshd, ssh_dir, f"[127.0.0.?]:{sshd.port} {sshd.host_key_line()}")
    assert _logs_in(config)
