"""What ``doctor`` asks the machine: the engine, the images, the host firewall, user
namespaces, gVisor, and whether agent directories are still the ones pinned and not nested.

Each probe answers with a :class:`Check` instead of raising: doctor shows every problem at
once, and the first failure decides the exit code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orchestrator.config import Config
from orchestrator.errors import AdSandboxError
from orchestrator.paths import state_dir
from orchestrator.run.dirpin import nested_agents, pin_problem
from orchestrator.runtime import engine, firewall, gvisor, images
from orchestrator.state import StateStore

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    check: str
    status: Status
    detail: str
    exit_code: int = 0
    """What a ``fail`` of this check makes the command exit with."""


def check_engine() -> Check:
    try:
        engine.connect()
        return Check("engine", "ok", f"Docker {engine.engine_version()}")
    except AdSandboxError as exc:
        return Check("engine", "fail", exc.one_line(), 4)


def check_images(config: Config | None, engine_ok: bool) -> list[Check]:
    refs = [config.settings.images.agent if config else Config().settings.images.agent]
    if config:
        refs += sorted({a.image for a in config.agents.values() if a.image} - set(refs))
    if not engine_ok:
        return [Check(f"image {r}", "fail", "not checked: Docker engine not reachable", 4)
                for r in refs]  # fmt: skip
    checks: list[Check] = []
    for ref in refs:
        try:
            status = images.image_status(ref)
        except AdSandboxError as exc:
            checks.append(Check(f"image {ref}", "fail", exc.one_line(), 4))
            continue
        if status is None:
            hint = "build it with `ad-sandbox image build`"
            checks.append(Check(f"image {ref}", "fail", f"missing — {hint}", 4))
            continue
        size = f"{status.size_bytes / 1024**2:.0f} MB"
        version = f"claude {status.claude_version}" if status.claude_version else None
        detail = f"{status.id[:19]}, {size}, {version or 'claude version unknown'}"
        checks.append(Check(f"image {ref}", "ok" if version else "warn", detail))
    return checks


def check_directories(config: Config) -> list[Check]:
    """Agent directories swapped since they were registered (fail) and agent directories
    inside other agents' directories (warn: the outer agent can tamper with the inner)."""
    checks: list[Check] = []
    if (state_dir() / "state.db").exists():  # no pins yet otherwise; doctor creates nothing
        with StateStore() as state:
            for name, agent in sorted(config.agents.items()):
                problem = pin_problem(state, name, agent)
                if problem is not None:
                    checks.append(Check(f"agent {name}", "fail", problem, 2))
    checks += [Check(f"agent {n.inner}", "warn", n.warning()) for n in nested_agents(config)]
    return checks


def check_isolation() -> Check:
    """Whether the engine maps container users away from the host's (userns-remap, rootless).

    Without it the run's uid inside is the same uid on the host: the project's owner, or an
    unprivileged id where that is root. A warning, since the sandbox never runs as root.
    """
    try:
        options = engine.security_options()
    except AdSandboxError as exc:
        return Check("user namespaces", "warn", f"not checked: {exc.one_line()}")
    names = {o.split(",")[0].removeprefix("name=") for o in options}
    if "rootless" in names:
        return Check("user namespaces", "ok", "rootless engine: container ids are not host ids")
    if "userns" in names:
        return Check("user namespaces", "ok", "userns-remap on: container ids are not host ids")
    return Check("user namespaces", "warn",
                 "off: a run's uid is the same uid on the host — turn on userns-remap "
                 "(dockerd --userns-remap=default) or use rootless Docker")


def check_firewall(config: Config | None) -> Check:
    """Whether the host rules that keep runs gateway-only are in place (runs install them)."""
    if config is not None and config.settings.host_firewall == "off":
        return Check("host firewall", "warn", "off (settings.host_firewall): every host "
                     "service on the agents network's addresses answers the agents")
    status = firewall.firewall_status()
    if status.in_place:
        return Check("host firewall", "ok", status.detail)
    if not status.installable:
        return Check("host firewall", "fail", f"{status.detail}: runs refuse to start — "
                     f"{firewall.OPT_OUT_HINT}", 4)
    return Check("host firewall", "warn", f"not in place ({status.detail}); the next run "
                 "installs it")


def check_gvisor(config: Config | None) -> Check:
    """Whether runsc (gVisor) is registered with the engine: a warning without it, a failure
    when an agent's ``sandbox.runtime`` asks for it."""
    wanting = sorted(name for name, agent in (config.agents if config else {}).items()
                     if agent.sandbox.runtime == gvisor.RUNSC)
    try:
        runtimes = engine.engine_runtimes()
    except AdSandboxError as exc:
        return Check("gVisor (runsc)", "warn", f"not checked: {exc.one_line()}")
    if gvisor.runsc_registered(runtimes):
        path = (runtimes.get(gvisor.RUNSC) or {}).get("path", "?")
        used = f"; used by {', '.join(wanting)}" if wanting else ""
        return Check("gVisor (runsc)", "ok", f"registered with the engine ({path}){used}")
    if wanting:
        return Check("gVisor (runsc)", "fail", "not registered with the engine, so runs of "
                     f"{', '.join(wanting)} (sandbox.runtime: runsc) fail — "
                     f"{gvisor.REGISTER_HINT}", 4)
    return Check("gVisor (runsc)", "warn", "not registered with the engine (agents can use "
                 f"sandbox.runtime: runsc once it is) — {gvisor.REGISTER_HINT}")
