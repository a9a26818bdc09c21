"""A throwaway OpenSSH server on 127.0.0.1 that the current user can log in to.

Everything (keys, config, pid file, log) lives in one work directory, so a
test can start a fresh server in ``tmp_path`` and forget about it afterwards.
"""
from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Optional

SSHD = os.environ.get("EVALKIT_SSHD", "/usr/sbin/sshd")  # Debian's; override for other layouts
SSH_KEYGEN = "ssh-keygen"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def _free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path, comment: str) -> None:
    """Create an unencrypted ed25519 key pair at ``path`` / ``path.pub``."""
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)  # ssh-keygen would prompt to overwrite
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )
    path.chmod(0o600)


def _banner_ok(host: str, port: int) -> bool:
    """True when something on host:port accepts a connection and speaks SSH-2.0."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.settimeout(1.0)
            return sock.recv(64).startswith(b"SSH-2.0")
    except OSError:
        return False


class LoopbackSshd:
    """An ``sshd -D`` child process listening on a free loopback port.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. Works as
    root (``PermitRootLogin prohibit-password`` still allows key logins).
    """

    host = "127.0.0.1"

    def __init__(self, workdir: Path, sftp_server: Optional[str] = "internal-sftp",
                 environment: Optional[dict[str, str]] = None) -> None:
        """SFTP_SERVER: the `Subsystem sftp` program (Debian's is /usr/lib/openssh/sftp-server);
        None for a server without SFTP, as some containers and hardened servers are.
        ENVIRONMENT: variables every session gets (sshd's SetEnv), as a login node's profile sets them."""
        self.workdir = Path(workdir).resolve()
        self.sftp_server = sftp_server
        self.environment = dict(environment or {})
        self.port = 0
        self.user = getpass.getuser()
        self.user_key = self.workdir / "id_ed25519"
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        self.config = self.workdir / "sshd_config"
        self.log_path = self.workdir / "sshd.log"
        self._proc: Optional[subprocess.Popen[bytes]] = None

    def __enter__(self) -> "LoopbackSshd":
        self.start()
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.stop()

    def start(self) -> None:
        """Generate keys and config, launch sshd, and wait until it answers.

        Raises RuntimeError (with the tail of ``sshd.log``) if it does not
        come up within ``START_TIMEOUT_S``.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        _keygen(self.host_key, "evalkit-testbed-host")
        _keygen(self.user_key, "evalkit-testbed-user")
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(self.user_key.with_name(self.user_key.name + ".pub").read_text())
        authorized.chmod(0o600)
        self.port = _free_port()
        self.config.write_text(self._sshd_config())
        self._launch()

    def restart(self) -> None:
        """Start the stopped sshd again on the same port with the same keys, as after a server
        reboot: clients that knew it reconnect without a host key warning."""
        self.stop()
        self._launch()

    def _launch(self) -> None:
        # sshd refuses to start without its privilege-separation directory.
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        self._wait_ready()

    def _sshd_config(self) -> str:
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            # Quoted so that a work dir with spaces still parses.
            f'HostKey "{self.host_key}"',
            f'AuthorizedKeysFile "{self.workdir / "authorized_keys"}"',
            # With PAM, sshd leaves account checks to PAM, which allows a key login to an
            # account whose password is locked ('!...', as root's is in many containers);
            # without it sshd refuses that account outright.
            "UsePAM yes",
            # The work dir is usually under /tmp, which StrictModes rejects.
            "StrictModes no",
            f'PidFile "{self.workdir / "sshd.pid"}"',
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "AllowTcpForwarding yes",
            "LogLevel VERBOSE",
        ]
        if self.sftp_server:
            lines.append(f"Subsystem sftp {self.sftp_server}")
        if self.environment:
            lines.append("SetEnv " + " ".join(f'"{name}={value}"' for name, value in self.environment.items()))
        return "\n".join(lines) + "\n"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                self._fail(f"sshd exited with status {self._proc.returncode}")
            if _banner_ok(self.host, self.port):
                return
            time.sleep(0.1)
        self._fail(f"sshd did not answer on port {self.port} within {START_TIMEOUT_S:.0f} s")

    def _fail(self, why: str) -> None:
        self.stop()
        raise RuntimeError(f"{why}; tail of {self.log_path}:\n{self.log_tail()}")

    def kill_sessions(self) -> list[int]:
        """SIGKILL the sshd processes serving connections (not the listener): every live SSH
        connection drops, as when the Wi-Fi goes, while new ones are still accepted."""
        listener = self._proc.pid if self._proc else None
        parents = {}
        names = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            names[int(entry.name)] = stat[stat.index("(") + 1:stat.rindex(")")]
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
        serving = [pid for pid in parents if pid != listener and self._descends(pid, listener, parents)
                   and names[pid].startswith("sshd")]
        for pid in serving:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return serving

    @staticmethod
    def _descends(pid: int, ancestor: Optional[int], parents: dict) -> bool:
        while pid in parents and pid != ancestor:
            pid = parents[pid]
        return pid == ancestor and ancestor is not None

    def log_tail(self, lines: int = 30) -> str:
        """Last ``lines`` lines of the sshd log (empty if there is none yet)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate sshd (SIGKILL after ``STOP_TIMEOUT_S``). Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def host_key_line(self) -> str:
        """The public host key as ``"ssh-ed25519 AAAA..."`` (no comment)."""
        pub = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()
        return f"{pub[0]} {pub[1]}"

    def known_hosts_line(self, port: Optional[int] = None) -> str:
        """A known_hosts entry; non-22 ports need the ``[host]:port`` form."""
        return f"[{self.host}]:{port or self.port} {self.host_key_line()}"

    def write_client_files(self, ssh_dir: Path, alias: str = "seetacloud-v800",
                           port: Optional[int] = None) -> tuple[Path, Path]:
        """Write an OpenSSH client ``config`` and ``known_hosts`` into ``ssh_dir``.

        The config pins this server's host key (StrictHostKeyChecking yes), so
        a successful login proves the alias, user key and host key all match.
        ``port``: where clients connect instead of the server's own (a delay
        proxy in front of it). Returns ``(config_path, known_hosts_path)``.
        """
        ssh_dir = Path(ssh_dir).resolve()
        ssh_dir.mkdir(parents=True, exist_ok=True)
        ssh_dir.chmod(0o700)
        known_hosts = ssh_dir / "known_hosts"
        known_hosts.write_text(self.known_hosts_line(port) + "\n")
        known_hosts.chmod(0o600)
        config = ssh_dir / "config"
        config.write_text(
            f"Host {alias}\n"
            f"    HostName {self.host}\n"
            f"    Port {port or self.port}\n"
            f"    User {self.user}\n"
            f'    IdentityFile "{self.user_key}"\n'
            "    IdentitiesOnly yes\n"
            f'    UserKnownHostsFile "{known_hosts}"\n'
            "    StrictHostKeyChecking yes\n"
        )
        config.chmod(0o600)  # ssh rejects a config writable by others
        return config, known_hosts
