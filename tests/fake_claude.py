"""A stand-in for the `claude` CLI, run by the fake runtime's exec: it speaks to the real
gateway (run token as API key) and prints stream-json the way claude 2.1.332 does.

Only for fast unit tests of the dispatcher's logic; the docker tests run the real claude.
"""

from __future__ import annotations

import json

import httpx

from orchestrator.runtime.fake import FakeExec


def _flag(argv: tuple[str, ...], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def claude_argv(proc: FakeExec) -> tuple[str, ...]:
    """The claude argv inside the runner's ``bash -c SCRIPT $0 claude ...`` wrapper."""
    assert proc.argv[:2] == ("bash", "-c"), proc.argv
    return proc.argv[4:]


def prompt_of(proc: FakeExec) -> str:
    """The runner sends the prompt on the exec's stdin (the wrapper hands it to claude)."""
    assert proc.stdin, "no prompt on stdin"
    return proc.stdin.decode()


def fake_claude(proc: FakeExec) -> int:
    base = proc.env["ANTHROPIC_BASE_URL"]
    argv = claude_argv(proc)
    session = _flag(argv, "--session-id") or _flag(argv, "--resume") or "none"
    prompt = prompt_of(proc)
    proc.out(json.dumps({"type": "system", "subtype": "init", "session_id": session}))
    response = httpx.post(
        f"{base}/v1/messages?beta=true",
        headers={"x-api-key": proc.env["ANTHROPIC_API_KEY"], "anthropic-version": "2023-06-01"},
        json={"model": "claude-sonnet-4-5", "max_tokens": 100,
              "messages": [{"role": "user", "content": prompt}]},
        timeout=120,
    )
    if response.status_code != 200:
        message = response.json().get("error", {}).get("message", "")
        proc.out(json.dumps({
            "type": "result", "subtype": "success", "is_error": True,
            "result": f"API Error: {response.status_code} {message}",
            "api_error_status": response.status_code, "session_id": session,
            "num_turns": 1, "total_cost_usd": 0, "usage": {"input_tokens": 0,
                                                           "output_tokens": 0},
        }))
        return 1
    body = response.json()
    text = "".join(block.get("text", "") for block in body["content"])
    proc.out(json.dumps({"type": "assistant", "session_id": session,
                         "message": {"content": [{"type": "text", "text": text}]}}))
    proc.out(json.dumps({
        "type": "result", "subtype": "success", "is_error": False, "result": text,
        "session_id": session, "num_turns": 1, "total_cost_usd": 0.0001,
        "usage": body["usage"], "duration_ms": 5,
    }))
    return 0
