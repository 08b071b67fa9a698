"""Redaction forms, the in-container transcript scrub, and the result cross-check (issue 7)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from orchestrator.claude.output import StreamParser
from orchestrator.gateway.answers import AnswerTap, candidate_digests, text_digest
from orchestrator.models import ClaudeResult
from orchestrator.redaction import forms_of, redact, redactor
from orchestrator.run.crosscheck import Evidence, mismatch
from orchestrator.run.transcripts import SCRUB_SCRIPT
from orchestrator.state.answers import RelayedAnswer
from orchestrator.stub import wire
from orchestrator.stub.directives import Plan

SECRET = b"tok/3f9a1c77e0b2+k&v=1\n"
VALUE = SECRET.strip().decode()
MARK = "[redacted:API]"


@pytest.mark.parametrize("prefix", [b"", b"x", b"xy", b"abc", b"abcd"])
def test_base64_at_every_alignment_is_redacted(prefix: bytes) -> None:
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        printed = encode(prefix + SECRET.strip() + b" and more").decode()
        out = redact(f"data: {printed}", {"API": SECRET})
        assert MARK in out
        # What stays encodes the neighbours and at most two bytes of the secret at each end.
        left, _, right = out.removeprefix("data: ").partition(MARK)
        assert len(left) <= (len(prefix) + 2) * 4 // 3 + 3
        assert len(right) <= (2 + len(b" and more")) * 4 // 3 + 4


@pytest.mark.parametrize("shown", [
    VALUE, VALUE.encode().hex(), VALUE.encode().hex().upper(), quote(VALUE, safe=""),
    quote(VALUE, safe="").lower(), quote_plus(VALUE), VALUE[::-1],
])
def test_each_encoding_is_redacted(shown: str) -> None:
    assert redact(f"<{shown}>", {"API": SECRET}) == f"<{MARK}>"


def test_json_escaped_values_are_redacted() -> None:
    secret = b'pa"ss\\word\nline2'
    line = json.dumps({"content": f"the value: {secret.decode()}"})
    assert "pa" not in redact(line, {"S": secret}).split("value: ")[1][:5]
    assert "[redacted:S]" in redact(line, {"S": secret})


def test_short_values_and_short_forms() -> None:
    assert redact("abc is short", {"S": b"abc"}) == "abc is short"
    # A 4-character secret is redacted raw, but its short encodings are not looked for.
    assert all(len(form) >= 8 for form in forms_of(b"abcd") if form != "abcd")
    assert redact("abcd dcba", {"S": b"abcd"}) == "[redacted:S] dcba"


def test_longest_form_wins_and_names_are_kept() -> None:
    secrets = {"LONG": b"secret-value-long", "SHORT": b"secret-value"}
    assert redact("x secret-value-long y secret-value z", secrets) == \
        "x [redacted:LONG] y [redacted:SHORT] z"
    pairs = redactor(secrets).pairs()
    assert [len(form) for form, _ in pairs] == sorted((len(f) for f, _ in pairs), reverse=True)


def test_no_secrets_changes_nothing() -> None:
    assert redact("plain text", {}) == "plain text"


# ---- the transcript scrub script (it runs in the container; pure Python) -------------------

def _scrub(root: Path, session: str, secrets: dict[str, bytes]) -> dict[str, int]:
    job = {"root": str(root), "session": session, "pairs": redactor(secrets).pairs(),
           "limit": 1 << 20}
    done = subprocess.run([sys.executable, "-I", "-c", SCRUB_SCRIPT], input=json.dumps(job),
                          capture_output=True, text=True, check=True, timeout=60)
    counts: dict[str, int] = json.loads(done.stdout)
    return counts


def test_scrub_rewrites_only_the_sessions_files_and_follows_no_symlink(tmp_path: Path) -> None:
    session = "1b2c3d4e-0000-4000-8000-000000000001"
    volume = tmp_path / "volume"
    project = volume / "-workspace"
    (project / session / "subagents").mkdir(parents=True)
    outside = tmp_path / "project.env"
    outside.write_text(f"TOKEN={VALUE}\n")
    leak = json.dumps({"tool_result": f"{VALUE} {base64.b64encode(SECRET.strip()).decode()}"})
    (project / f"{session}.jsonl").write_text(leak + "\n")
    (project / session / "subagents" / "agent-1.jsonl").write_text(leak + "\n")
    (project / "other-session.jsonl").write_text(leak + "\n")
    (project / f"{session}-link.jsonl").symlink_to(outside)
    (project / session / "dir-link").symlink_to(tmp_path, target_is_directory=True)
    counts = _scrub(volume, session, {"API": SECRET})
    assert counts == {"files": 2, "rewritten": 2, "skipped": 0}
    for path in (project / f"{session}.jsonl", project / session / "subagents" / "agent-1.jsonl"):
        text = path.read_text()
        assert VALUE not in text and text.count(MARK) == 2
        json.loads(text)  # still one valid JSON line
    assert VALUE in (project / "other-session.jsonl").read_text()  # another run's
    assert outside.read_text() == f"TOKEN={VALUE}\n"  # never through a symlink


def test_scrub_skips_files_over_the_limit(tmp_path: Path) -> None:
    session = "s-1"
    (tmp_path / f"{session}.jsonl").write_bytes(VALUE.encode() + b"x" * (2 << 20))
    assert _scrub(tmp_path, session, {"API": SECRET})["skipped"] == 1


# ---- the answer tap and the cross-check -----------------------------------------------------

def _stream(text: str) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    plan = Plan(text)
    return wire.stream_head(plan, body) + b"".join(wire.stream_body(plan, body))


def test_the_tap_reads_sse_text_and_completes_before_the_last_bytes() -> None:
    raw = _stream("a long answer split over several deltas, twice over")
    tap = AnswerTap("text/event-stream", None, "sess")
    completed_at = [i for i in range(0, len(raw), 7) if tap.feed(raw[i : i + 7])]
    assert len(completed_at) == 1 and completed_at[0] >= len(raw) - 7
    answer = tap.answer()
    assert answer.session_id == "sess" and answer.stop_reason == "end_turn"
    assert text_digest("a long answer split over several deltas, twice over") in answer.digests
    assert not tap.finish()


def test_the_tap_reads_a_json_answer() -> None:
    body = json.dumps({"type": "message", "content": [
        {"type": "text", "text": "one"}, {"type": "tool_use", "id": "t", "name": "x",
                                          "input": {}}, {"type": "text", "text": "two"}],
        "stop_reason": "end_turn"}).encode()
    tap = AnswerTap("application/json", str(len(body)), None)
    assert not tap.feed(body[:10]) and tap.feed(body[10:])
    digests = tap.answer().digests
    assert {text_digest(t) for t in ("one", "two", "one\ntwo", "one\n\ntwo")} <= set(digests)
    unsized = AnswerTap("application/json", None, None)
    assert not unsized.feed(body) and unsized.finish()


def test_the_tap_ignores_what_is_not_an_answer() -> None:
    tap = AnswerTap("application/json", None, None)
    tap.feed(b'{"input_tokens": 3}')
    assert not tap.finish()
    assert not AnswerTap("text/plain", None, None).feed(b"hello")


def _result(text: str, session: str = "s") -> ClaudeResult:
    return ClaudeResult(is_error=False, subtype="success", result=text, session_id=session)


def _evidence(answer_text: str | None, **changes: object) -> Evidence:
    answer = None if answer_text is None else RelayedAnswer("s", candidate_digests([answer_text]),
                                                            "end_turn")
    fields: dict[str, object] = {"result_events": 1, "exit_code": 0, "session_id": "s",
                                 "answer": answer, **changes}
    return Evidence(**fields)  # type: ignore[arg-type]


def test_the_cross_check() -> None:
    assert mismatch(_result("done\n"), _evidence("done")) is None
    assert "differs" in str(mismatch(_result("FORGED"), _evidence("done")))
    assert "2 result events" in str(mismatch(_result("done"), _evidence("done",
                                                                         result_events=2)))
    assert "code 137" in str(mismatch(_result("done"), _evidence("done", exit_code=137)))
    assert "session" in str(mismatch(_result("done", "other"), _evidence("done")))
    assert "no model answer" in str(mismatch(_result("done"), _evidence(None)))
    wrong_session = _evidence("done", answer=RelayedAnswer("x", candidate_digests(["done"]),
                                                           None))
    assert "session 'x'" in str(mismatch(_result("done"), wrong_session))


def test_an_action_is_redacted_before_it_is_cut_short() -> None:
    parser = StreamParser()
    parser.clean = redactor({"API": SECRET})
    text = "x" * 70 + VALUE  # the cut at 80 characters would keep half the secret
    parser.feed(json.dumps({"type": "assistant", "message": {
        "id": "m1", "content": [{"type": "text", "text": text}]}}))
    assert VALUE[:5] not in parser.last_action.removeprefix("text: ").replace("x", "")
    parser.feed(json.dumps({"type": "assistant", "message": {
        "id": "m2", "content": [{"type": "tool_use", "name": "Bash",
                                 "input": {"command": f"echo {VALUE}"}}]}}))
    assert parser.last_action == f"Bash: echo {MARK}"
