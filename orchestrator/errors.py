"""The one error tree of ad-sandbox.

Every error says what happened and what to do next (``hint``), and carries the data
that explains it. The CLI maps ``exit_code`` to the process exit status (SPEC §8) and
the MCP server maps ``error_type`` to a result the calling model can act on (SPEC §6)::

    AdSandboxError                      exit 2  cli_error
    ├── ConfigError                     exit 2  cli_error   bad file, key or value
    ├── UsageError                      exit 2  cli_error   bad argument
    │   ├── AgentNotFound               exit 2  not_found
    │   ├── RunNotFound                 exit 2  not_found
    │   ├── PermissionDenied            exit 2  permission  outside allowed roots
    │   └── DirectoryChanged            exit 2  cli_error   agent directory swapped
    ├── LimitExceeded                   exit 3
    │   ├── RunTimeout                  exit 3  timeout
    │   ├── BudgetExceeded              exit 3  budget
    │   └── RecursionLimit              exit 3  recursion
    ├── SandboxError                    exit 4  sandbox
    │   ├── DockerUnavailable           exit 4  sandbox     engine not reachable
    │   ├── ImageMissing                exit 4  sandbox
    │   ├── ContainerFailed             exit 4  sandbox     create/start/exec failed
    │   ├── FirewallError               exit 4  sandbox     host firewall not in place
    │   └── OutOfMemory                 exit 4  oom
    └── TaskFailed                      exit 1  cli_error   the agent ran and failed
"""

from __future__ import annotations

from typing import Any, ClassVar


class AdSandboxError(Exception):
    """Base of every error ad-sandbox raises on purpose."""

    exit_code: ClassVar[int] = 2
    error_type: ClassVar[str] = "cli_error"
    default_hint: ClassVar[str] = "Run `ad-sandbox doctor` to check the setup."

    def __init__(self, message: str, *, hint: str | None = None, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.data = data

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message and the next step, on one line, for a terminal."""
        return f"{self.message} — {self.hint}" if self.hint else self.message


class ConfigError(AdSandboxError):
    default_hint = "Fix the configuration file and try again (`ad-sandbox doctor` checks it)."


class UsageError(AdSandboxError):
    default_hint = "See `ad-sandbox --help`."


class AgentNotFound(UsageError):
    error_type = "not_found"
    default_hint = "Run `ad-sandbox list` to see the registered agents."


class RunNotFound(UsageError):
    error_type = "not_found"
    default_hint = "Run `ad-sandbox jobs` to see recent runs."


class PermissionDenied(UsageError):
    error_type = "permission"
    default_hint = "Check settings.allowed_roots and the agent's dispatch_to list."


class DirectoryChanged(UsageError):
    """An agent directory is no longer the directory it was registered with."""

    default_hint = ("Check the directory; if the change is yours, re-register it with "
                    "`ad-sandbox update NAME --directory DIR`.")


class LimitExceeded(AdSandboxError):
    exit_code = 3
    default_hint = "Raise the limit in the configuration or make the task smaller."


class RunTimeout(LimitExceeded):
    error_type = "timeout"
    default_hint = "Give the run a longer timeout, or resume its session with a narrower task."


class BudgetExceeded(LimitExceeded):
    error_type = "budget"
    default_hint = "Raise settings.budget or the agent's max_budget_usd, or wait a while."


class RecursionLimit(LimitExceeded):
    error_type = "recursion"
    default_hint = "Answer the task yourself instead of dispatching further."


class SandboxError(AdSandboxError):
    exit_code = 4
    error_type = "sandbox"
    default_hint = "Run `ad-sandbox doctor` to check the Docker engine and images."


class DockerUnavailable(SandboxError):
    default_hint = "Start the Docker engine (e.g. `dockerd &` as root) and try again."


class ImageMissing(SandboxError):
    default_hint = "Build it with `ad-sandbox image build` (add --offline-base with no registry)."


class ContainerFailed(SandboxError):
    pass


class FirewallError(SandboxError):
    """The host rules that keep runs gateway-only cannot be installed."""

    default_hint = ("Run as root with iptables installed, or set `settings.host_firewall: off` "
                    "to run without the host firewall.")


class OutOfMemory(SandboxError):
    error_type = "oom"
    default_hint = "Raise the agent's resources.memory or make the task lighter."


class TaskFailed(AdSandboxError):
    exit_code = 1
    default_hint = "Read the result text; resume the session to continue."
