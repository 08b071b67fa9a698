"""gVisor (``runsc``) as an isolation level: registering it with the engine, and the words
that explain how when it is not.

Facts checked with Debian's runsc 0.0~20221219 on Docker 20.10 that shape this module:

- Docker knows a runtime only from ``runtimes`` in ``daemon.json`` (or ``--add-runtime``);
  it re-reads that file on ``SIGHUP``, so registering needs no engine restart.
- runsc must get ``--network=host``: with gVisor's own network stack every start fails with
  "cannot run with network enabled in root network namespace". "host" here is the network
  namespace Docker made for the container, so the bridge and the host firewall still apply.

Run as root, ``python -m orchestrator.runtime.gvisor register`` merges the entry into
``/etc/docker/daemon.json`` (every other key and runtime kept) and reloads the engine;
``scripts/bootstrap.sh`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.errors import ContainerFailed

RUNSC = "runsc"
RUNSC_PATH = "/usr/bin/runsc"
NETWORK_ARG = "--network=host"
DAEMON_JSON = Path("/etc/docker/daemon.json")
DOCKER_PID = Path("/var/run/docker.pid")
RELOAD_WAIT_S = 15.0

SNIPPET = json.dumps({"runtimes": {RUNSC: {"path": RUNSC_PATH, "runtimeArgs": [NETWORK_ARG]}}})
REGISTER_HINT = (
    f"Install gVisor (`apt-get install runsc`), add {SNIPPET} to {DAEMON_JSON} (merged with "
    f"what is there) and reload the engine (`kill -HUP $(cat {DOCKER_PID})`); as root, "
    "`scripts/bootstrap.sh` or `python -m orchestrator.runtime.gvisor register` does both."
)
"""How to register runsc: for ``doctor`` and for a run that asks for it on an engine
without it."""


def runsc_registered(runtimes: Mapping[str, Any]) -> bool:
    """Whether the engine's runtimes (``docker info`` → ``Runtimes``) include runsc."""
    return RUNSC in runtimes


def not_registered(runtime: str, container: str) -> ContainerFailed:
    """The error of a container asking for a runtime the engine does not know."""
    hint = REGISTER_HINT if runtime == RUNSC else (
        f"Register {runtime} in {DAEMON_JSON} under \"runtimes\" and reload the engine.")
    return ContainerFailed(f"runtime {runtime} is not registered with the Docker engine",
                           hint=hint, container=container, runtime=runtime)


def merged(settings: dict[str, Any], path: str = RUNSC_PATH) -> dict[str, Any]:
    """``settings`` (a daemon.json) with runsc registered; every other key is kept.

    A runsc entry already there is kept as it is, with ``--network=host`` added to its
    arguments when missing (without it no container starts)."""
    runtimes = settings.get("runtimes", {})
    if not isinstance(runtimes, dict):
        raise ValueError(f'"runtimes" is {type(runtimes).__name__}, not an object')
    entry = runtimes.get(RUNSC)
    if entry is None:
        entry = {"path": path, "runtimeArgs": [NETWORK_ARG]}
    elif not isinstance(entry, dict):
        raise ValueError(f'"runtimes.{RUNSC}" is {type(entry).__name__}, not an object')
    else:
        args = entry.get("runtimeArgs") or []
        if not isinstance(args, list):
            raise ValueError(f'"runtimes.{RUNSC}.runtimeArgs" is not a list')
        if not any(str(arg).startswith("--network=") for arg in args):
            entry = {**entry, "runtimeArgs": [*args, NETWORK_ARG]}
    return {**settings, "runtimes": {**runtimes, RUNSC: entry}}


def register_runsc(daemon_json: Path = DAEMON_JSON, path: str = RUNSC_PATH) -> bool:
    """Merge runsc into ``daemon_json`` (created when absent); True if the file changed.

    Raises ValueError when the file is not a JSON object (it is then left untouched)."""
    try:
        text = daemon_json.read_text()
    except FileNotFoundError:
        text = ""
    try:
        settings = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{daemon_json} is not valid JSON ({exc})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{daemon_json} holds {type(settings).__name__}, not a JSON object")
    wanted = merged(settings, path)
    if wanted == settings:
        return False
    _write_atomically(daemon_json, json.dumps(wanted, indent=2) + "\n")
    return True


def reload_engine(pidfile: Path = DOCKER_PID) -> bool:
    """SIGHUP the dockerd named by ``pidfile`` so it re-reads daemon.json; False when no
    dockerd runs there (a dockerd started later reads the file anyway)."""
    try:
        pid = int(pidfile.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return False
    if comm != "dockerd":  # a stale pid file naming some other process
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    return True


def wait_registered(runtimes: Callable[[], Mapping[str, Any]],
                    timeout: float = RELOAD_WAIT_S) -> bool:
    """Poll ``runtimes`` (the engine's) until runsc is among them or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if runsc_registered(runtimes()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _write_atomically(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """``register``: merge runsc into daemon.json, reload the engine, wait until it lists
    runsc. Exit 0 when registered, 1 otherwise (the reason on stderr)."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.runtime.gvisor")
    parser.add_argument("command", choices=["register"])
    parser.add_argument("--daemon-json", type=Path, default=DAEMON_JSON)
    parser.add_argument("--pidfile", type=Path, default=DOCKER_PID)
    parser.add_argument("--runsc", default=RUNSC_PATH, help="the runsc binary's path")
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(f"gvisor: {text}", file=sys.stderr)

    if not os.access(args.runsc, os.X_OK):
        say(f"{args.runsc} is not an executable; install it with `apt-get install runsc`")
        return 1
    try:
        changed = register_runsc(args.daemon_json, args.runsc)
    except (OSError, ValueError) as exc:
        say(f"cannot register runsc: {exc}")
        return 1
    say(f"runsc {'added to' if changed else 'already in'} {args.daemon_json}")
    from orchestrator.errors import DockerUnavailable
    from orchestrator.runtime.engine import engine_runtimes

    try:
        if runsc_registered(engine_runtimes()):
            return 0
    except DockerUnavailable:
        say("the engine is not running; it reads the file when it starts")
        return 0
    if not reload_engine(args.pidfile):
        say(f"no dockerd runs with pid file {args.pidfile}: restart the engine to load it")
        return 1
    say("engine reloaded (SIGHUP)")
    if not wait_registered(engine_runtimes):
        say(f"the engine does not list runsc {RELOAD_WAIT_S:.0f}s after the reload; "
            "see its log")
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
