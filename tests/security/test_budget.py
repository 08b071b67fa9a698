"""Issue 7: a run cannot spend past its budget, however it calls the gateway.

The agent reads its own run token and the gateway's address from claude's environment (the
Bash tool inherits it) and calls ``/v1/messages`` itself from inside its container: thirty
requests at once, each telling the stub model to report large usage, or one request claiming
an enormous usage. The state's ledger afterwards must hold at most the budget: every request
holds its largest cost before it is forwarded, the forwarded ``max_tokens`` is cut to what the
budget can pay, and the usage an answer reports is booked up to what was held, never more.

Prices are set in the config so claude's own turns cost next to nothing and the agent's
requests name a priced model of their own; budgets are a cent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.state import StateStore
from tests.docker.support import run_json, write_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

AGENT = "spender"
BUDGET = 0.01
EPSILON = 1e-9
PRICES = {"claude": [0.001, 0.001], "ads-attack": [1.0, 1.0]}
"""USD per million tokens: claude's own turns are nearly free, the attack's model is not."""

ATTACK = r'''
import json, os, sys, threading, urllib.error, urllib.request

URL = os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages"
KEY = os.environ["ANTHROPIC_API_KEY"]

def call(text, max_tokens):
    body = json.dumps({"model": "ads-attack", "max_tokens": max_tokens, "stream": False,
                       "messages": [{"role": "user", "content": text}]}).encode()
    request = urllib.request.Request(URL, body, {
        "x-api-key": KEY, "content-type": "application/json",
        "anthropic-version": "2023-06-01"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except Exception as exc:
        return repr(exc)

mode = sys.argv[1]
if mode == "concurrent":
    results = []
    lock = threading.Lock()
    def one():
        status = call("[[sleep: 2]] [[usage: 20000 20000]] burn", 4096)
        with lock:
            results.append(status)
    threads = [threading.Thread(target=one) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
else:
    results = [call("[[usage: 900000000 900000000]] burn", 100000)]
with open("/workspace/attack.json", "w") as out:
    json.dump(results, out)
print("statuses", sorted(map(str, results)))
'''


def _setup(home: Path, project: Path, level: str) -> None:
    (project / "attack.py").write_text(ATTACK)
    # The run's uid writes its report here (the project belongs to root in these tests).
    os.chmod(project, 0o777)
    agent: dict[str, Any] = {"directory": str(project)}
    budget = {"per_run": 1.0, "per_root": 5.0, "daily": 50.0}
    if level == "run":
        agent["max_budget_usd"] = BUDGET
    else:
        budget["per_root" if level == "root" else "daily"] = BUDGET
    write_config(home, {AGENT: agent}, budget=budget,
                 model_api={"upstream": "stub", "credential": None, "prices": PRICES})


def _ledger(home: Path) -> tuple[float, float, int]:
    """Total metered USD on the machine, the largest single booking, and the row count."""
    with StateStore(home / "state" / "state.db") as store:
        row = store._db.conn().execute(
            "SELECT COALESCE(SUM(usd), 0), COALESCE(MAX(usd), 0), COUNT(*) FROM ledger"
        ).fetchone()
    return float(row[0]), float(row[1]), int(row[2])


def _statuses(project: Path, result: dict[str, Any]) -> list[Any]:
    report = project / "attack.json"
    assert report.exists(), f"the attack script did not run in the container: {result}"
    return list(json.loads(report.read_text()))


@pytest.mark.parametrize("level", ["run", "root", "daily"])
def test_thirty_concurrent_requests_stay_within_the_budget(
    home: Path, project: Path, level: str
) -> None:
    _setup(home, project, level)
    _code, result = run_json(home, AGENT, "[[bash: python3 /workspace/attack.py concurrent]]")
    statuses = _statuses(project, result)
    assert len(statuses) == 30
    forwarded = statuses.count(200)
    assert forwarded >= 1, statuses  # the attack really reached the model
    assert set(statuses) <= {200, 402}, statuses
    spent, _, rows = _ledger(home)
    assert spent <= BUDGET + EPSILON, (spent, statuses, result)
    assert float(result.get("cost_usd") or 0.0) <= BUDGET + EPSILON, result
    assert rows >= forwarded


@pytest.mark.parametrize("level", ["run", "root"])
def test_one_request_cannot_book_more_than_it_held(
    home: Path, project: Path, level: str
) -> None:
    _setup(home, project, level)
    _code, result = run_json(home, AGENT, "[[bash: python3 /workspace/attack.py huge]]")
    statuses = _statuses(project, result)
    assert statuses == [200], statuses  # forwarded, with max_tokens cut to what fits
    spent, largest, _ = _ledger(home)
    assert spent <= BUDGET + EPSILON, (spent, result)
    assert largest <= BUDGET + EPSILON
    assert float(result.get("cost_usd") or 0.0) <= BUDGET + EPSILON, result
    with StateStore(home / "state" / "state.db") as store:
        [overrun] = store.overruns()  # the claim was seen and flagged, not booked
    assert overrun.metered_usd > 1000 and overrun.held_usd <= BUDGET + EPSILON
