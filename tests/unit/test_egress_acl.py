"""The proxy's policy helper (images/proxy/egress-acl) run by the host's ``sh``, as squid
runs it: one request per line in, OK or ERR per line out, decisions appended per client.
The proxy itself is driven in tests/docker/test_proxy.py."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

HELPER = Path(__file__).resolve().parents[2] / "images" / "proxy" / "egress-acl"
CLIENT = "172.30.0.5"


def ask(state: Path, *lines: str) -> list[str]:
    """Feed squid-format lines to the helper; its answers, one per line."""
    done = subprocess.run(["sh", str(HELPER)], input="".join(f"{line}\n" for line in lines),
                          capture_output=True, text=True, timeout=30, check=True,
                          env={"PATH": "/usr/bin:/bin", "AD_SANDBOX_PROXY_STATE": str(state)})
    assert done.stderr == ""
    return done.stdout.splitlines()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    (tmp_path / "policy").mkdir()
    (tmp_path / "decisions").mkdir()
    return tmp_path


def policy(state: Path, text: str, client: str = CLIENT) -> None:
    (state / "policy" / client).write_text(text)


def decisions(state: Path, client: str = CLIENT) -> list[str]:
    """The client's decision lines without their time (checked to be now)."""
    lines = (state / "decisions" / client).read_text().splitlines()
    for line in lines:
        assert abs(int(line.split(" ", 1)[0]) - time.time()) < 60, line
    return [line.split(" ", 1)[1] for line in lines]


@pytest.mark.parametrize(("host", "allowed"), [
    ("api.example.org", True), ("Api.Example.org.", True), ("files.api.example.org", False),
    ("api.github.com", True), ("a.b.github.com", True), ("github.com", False),
    ("xgithub.com", False), ("api.github.com.evil", False), ("evil.com", False),
])
def test_allowlist_matches_exact_names_and_subdomain_patterns(
        state: Path, host: str, allowed: bool) -> None:
    policy(state, "allowlist\napi.example.org\n*.github.com\n")
    (answer,) = ask(state, f"{CLIENT} GET {host} - request")
    assert answer.startswith("OK" if allowed else "ERR")
    verdict = "allow" if allowed else "deny"
    assert decisions(state) == [f"{verdict} {host.lower().rstrip('.')} http"]


def test_connect_and_sni_are_checked_and_recorded_by_name(state: Path) -> None:
    policy(state, "allowlist\nallowed.test\n")
    answers = ask(state, f"{CLIENT} CONNECT allowed.test - request",
                  f"{CLIENT} CONNECT allowed.test allowed.test sni",
                  f"{CLIENT} CONNECT allowed.test denied.test sni",
                  f"{CLIENT} CONNECT allowed.test - sni")
    assert [a.split()[0] for a in answers] == ["OK", "OK", "ERR", "ERR"]
    assert answers[2] == 'ERR message="ad-sandbox egress policy: denied.test is not in allow_hosts"'
    assert decisions(state) == ["allow allowed.test connect", "allow allowed.test sni",
                                "deny denied.test sni", "deny - sni"]


@pytest.mark.parametrize("mode", ["learn", "open"])
def test_learn_and_open_allow_everything_and_record_it(state: Path, mode: str) -> None:
    policy(state, f"{mode}\n")
    assert ask(state, f"{CLIENT} GET %5b::1%5d - request",
               f"{CLIENT} CONNECT 192.0.2.7 - sni") == ["OK", "OK"]
    assert decisions(state) == ["allow ::1 http", "allow - sni"]


def test_an_allowlist_denies_what_names_no_host(state: Path) -> None:
    policy(state, "allowlist\n-\n*\n")
    assert ask(state, f"{CLIENT} CONNECT allowed.test - sni",
               f"{CLIENT} GET a/b - request") == [
        'ERR message="ad-sandbox egress policy: no host name to check (sni)"',
        'ERR message="ad-sandbox egress policy: no host name to check (http)"']
    assert decisions(state) == ["deny - sni", "deny - http"]


def test_no_policy_or_an_unknown_mode_denies_and_each_edit_applies_at_once(state: Path) -> None:
    line = f"{CLIENT} GET api.example.org - request"
    assert ask(state, line) == [f'ERR message="ad-sandbox egress policy: no egress allowed for '
                                f'{CLIENT}"']
    policy(state, "allow-everything\n")
    assert ask(state, line)[0].startswith("ERR")
    policy(state, "allowlist\napi.example.org\n")
    assert ask(state, line) == ["OK"]
    policy(state, "allowlist\n")
    assert ask(state, line)[0].startswith("ERR")


def test_a_client_field_that_is_no_address_writes_nowhere(state: Path) -> None:
    policy(state, "open\n")
    assert ask(state, f"../policy/{CLIENT} GET api.example.org - request")[0].startswith("ERR")
    assert list((state / "decisions").iterdir()) == []
