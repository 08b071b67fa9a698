"""The one error tree of ad-sandbox.

Every error says what happened and what to do next (``hint``), and carries the data
that explains it. Each class names an ``error_type``; its exit code (SPEC §8) and default
hint come from the one table of outcomes, :mod:`orchestrator.outcomes`. The CLI exits with
``exit_code`` and the MCP server answers with ``error_type`` (SPEC §6)::

    AdSandboxError                      exit 2  config      state store, stub, helper
    ├── ConfigError                     exit 2  config      bad file, key, value or secret
    ├── UsageError                      exit 2  bad_request bad argument
    │   ├── AgentNotFound               exit 2  not_found
    │   ├── RunNotFound                 exit 2  not_found
    │   ├── PermissionDenied            exit 2  permission  outside allowed roots
    │   └── DirectoryChanged            exit 2  bad_request agent directory swapped
    ├── BudgetExceeded                  exit 3  budget
    ├── RecursionLimit                  exit 3  recursion
    └── SandboxError                    exit 4  sandbox
        ├── DockerUnavailable           exit 4  sandbox     engine not reachable
        ├── ImageMissing                exit 4  sandbox
        ├── ContainerFailed             exit 4  sandbox     create/start/exec failed
        └── FirewallError               exit 4  sandbox     host firewall not in place

A run that times out, runs out of memory, is cancelled or fails its task is not an
exception: it is a result whose ``exit_reason`` and ``error_type`` the same table explains.
"""

from __future__ import annotations

from typing import Any, ClassVar

from orchestrator.outcomes import FAILURES, ErrorType


class AdSandboxError(Exception):
    """Base of every error ad-sandbox raises on purpose."""

    error_type: ClassVar[ErrorType] = "config"
    default_hint: ClassVar[str | None] = None
    """None: the hint of ``error_type`` in the table of outcomes."""

    def __init__(self, message: str, *, hint: str | None = None, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        default = self.default_hint or FAILURES[self.error_type].hint
        self.hint = hint if hint is not None else default
        self.data = data

    @property
    def exit_code(self) -> int:
        """The CLI exit status (SPEC §8), from the table of outcomes."""
        return FAILURES[self.error_type].exit_code

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message and the next step, on one line, for a terminal."""
        return f"{self.message} — {self.hint}" if self.hint else self.message


class ConfigError(AdSandboxError):
    """A configuration file, key, value or secret source that cannot be used."""


class UsageError(AdSandboxError):
    """A request or argument that is wrong as given."""

    error_type: ClassVar[ErrorType] = "bad_request"


class AgentNotFound(UsageError):
    error_type: ClassVar[ErrorType] = "not_found"
    default_hint = "Run `ad-sandbox list` to see the registered agents."


class RunNotFound(UsageError):
    error_type: ClassVar[ErrorType] = "not_found"
    default_hint = "Run `ad-sandbox jobs` to see recent runs."


class PermissionDenied(UsageError):
    error_type: ClassVar[ErrorType] = "permission"


class DirectoryChanged(UsageError):
    """An agent directory is no longer the directory it was registered with."""

    default_hint = ("Check the directory; if the change is yours, re-register it with "
                    "`ad-sandbox update NAME --directory DIR`.")


class BudgetExceeded(AdSandboxError):
    """A dispatch refused before it starts: a money budget is spent."""

    error_type: ClassVar[ErrorType] = "budget"


class RecursionLimit(AdSandboxError):
    """A nested dispatch deeper than the configured limit."""

    error_type: ClassVar[ErrorType] = "recursion"


class SandboxError(AdSandboxError):
    error_type: ClassVar[ErrorType] = "sandbox"
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
