"""known_hosts lines mean what they mean to OpenSSH: markers, hashed names, patterns, ports."""
from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from evalkit.ssh.known_hosts import KnownHosts, Verdict, parse_line

RIGHT = base64.b64encode(b"\0\0\0\x0bssh-ed25519right").decode()
WRONG = base64.b64encode(b"\0\0\0\x0bssh-ed25519wrong").decode()
RIGHT_BLOB = base64.b64decode(RIGHT)


def _hashed(name: str, salt: bytes = b"0123456789abcdefghij") -> str:
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def _check(text: str, name: str) -> Verdict:
    entries = [parse_line(line, f"kh:{n}") for n, line in enumerate(text.splitlines(), 1)]
    return KnownHosts([e for e in entries if e is not None]).check(name, RIGHT_BLOB)[0]


@pytest.mark.parametrize("text, name, verdict", [
    (f"example.org ssh-ed25519 {RIGHT}", "example.org", Verdict.TRUSTED),
    (f"EXAMPLE.org ssh-ed25519 {RIGHT}", "example.org", Verdict.TRUSTED),
    (f"example.org ssh-ed25519 {RIGHT}", "[example.org]:2222", Verdict.UNKNOWN),
    (f"[example.org]:2222 ssh-ed25519 {RIGHT}", "[example.org]:2222", Verdict.TRUSTED),
    (f"[example.org]:2222 ssh-ed25519 {RIGHT}", "example.org", Verdict.UNKNOWN),
    (f"other.org,example.org ssh-ed25519 {RIGHT} a comment", "example.org", Verdict.TRUSTED),
    (f"*.org ssh-ed25519 {RIGHT}", "example.org", Verdict.TRUSTED),
    (f"exampl?.org ssh-ed25519 {RIGHT}", "example.org", Verdict.TRUSTED),
    (f"[10.0.0.*]:222? ssh-ed25519 {RIGHT}", "[10.0.0.7]:2222", Verdict.TRUSTED),
    (f"*.org,!example.org ssh-ed25519 {RIGHT}", "example.org", Verdict.UNKNOWN),
    (f"!example.org,*.org ssh-ed25519 {RIGHT}", "other.org", Verdict.TRUSTED),
    (f"{_hashed('example.org')} ssh-ed25519 {RIGHT}", "example.org", Verdict.TRUSTED),
    (f"{_hashed('[example.org]:2222')} ssh-ed25519 {RIGHT}", "[example.org]:2222", Verdict.TRUSTED),
    (f"{_hashed('example.org')} ssh-ed25519 {RIGHT}", "other.org", Verdict.UNKNOWN),
    (f"example.org ssh-ed25519 {WRONG}", "example.org", Verdict.CHANGED),
    (f"example.org ssh-ed25519 {WRONG}\nexample.org ssh-ed25519 {RIGHT}", "example.org", Verdict.TRUSTED),
    (f"example.org ssh-ed25519 {RIGHT}\nexample.org ssh-ed25519 {WRONG}", "example.org", Verdict.TRUSTED),
    (f"other.org ssh-ed25519 {WRONG}", "example.org", Verdict.UNKNOWN),
    (f"@cert-authority *.org ssh-ed25519 {RIGHT}", "example.org", Verdict.UNKNOWN),
    (f"@cert-authority *.org ssh-ed25519 {WRONG}\nexample.org ssh-ed25519 {RIGHT}", "example.org",
     Verdict.TRUSTED),
    (f"example.org ssh-ed25519 {RIGHT}\n@revoked * ssh-ed25519 {RIGHT}", "example.org", Verdict.REVOKED),
    (f"@revoked other.org ssh-ed25519 {RIGHT}\nexample.org ssh-ed25519 {RIGHT}", "example.org",
     Verdict.TRUSTED),
    (f"@revoked * ssh-ed25519 {WRONG}\nexample.org ssh-ed25519 {RIGHT}", "example.org", Verdict.TRUSTED),
    (f"# example.org ssh-ed25519 {RIGHT}\n\nexample.org ssh-ed25519 not-base64!", "example.org",
     Verdict.UNKNOWN),
    ("example.org ssh-ed25519", "example.org", Verdict.UNKNOWN),
])
def test_known_hosts_lines_decide_like_openssh(text, name, verdict):
    assert _check(text, name) is verdict


def test_a_malformed_or_unreadable_file_holds_no_keys(tmp_path):
    (tmp_path / "kh").write_bytes(b"@revoked\n\xff\xfe garbage\nexample.org ssh-ed25519 " + RIGHT.encode())
    known = KnownHosts.load((str(tmp_path / "kh"), str(tmp_path / "missing")))
    assert known.check("example.org", RIGHT_BLOB) == (Verdict.TRUSTED, known.entries[-1:])
    assert known.entries[-1].origin == f"{tmp_path / 'kh'}:3"


def test_known_key_types_are_asked_for_first():
    known = KnownHosts([parse_line(f"h ecdsa-sha2-nistp256 {RIGHT}", "kh:1"), parse_line(f"h ssh-rsa {RIGHT}", "kh:2"),
                        parse_line(f"@cert-authority h ssh-ed25519 {RIGHT}", "kh:3")])
    assert known.preferred_algorithms("h") == ["ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
