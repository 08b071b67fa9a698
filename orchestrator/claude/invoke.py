"""How `claude -p` is started: its argv, its environment and its MCP configuration.

The prompt never appears here: it goes on stdin, because argv shows in ``ps``, is capped
near 128 KiB, and a task starting with ``-`` would be parsed as a flag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from orchestrator.claude.prompt import DISPATCH_PROTOCOL
from orchestrator.config import Agent
from orchestrator.errors import ConfigError
from orchestrator.safefs import RefusedPath, read_file

GATEWAY_SERVER = "ad-sandbox"
"""Name of the orchestrator's MCP server in the agent's ``--mcp-config``."""
NESTED_TOOLS = ("dispatch", "dispatch_parallel", "list_agents", "dispatch_session")
"""The gateway's ``/mcp`` tools an agent with ``dispatch_to`` may call."""
MCP_FILE = ".mcp.json"
MCP_FILE_LIMIT = 1024 * 1024


def system_prompt(agent: Agent) -> str:
    """The text given to ``--append-system-prompt``: the protocol, then the agent's instructions."""
    instructions = agent.instructions.strip()
    return f"{DISPATCH_PROTOCOL}\n\n{instructions}" if instructions else DISPATCH_PROTOCOL


def build_argv(
    agent: Agent,
    *,
    session_id: str,
    resume: bool,
    model: str | None = None,
    max_budget_usd: float | None,
    mcp_config_path: str | None,
    output_format: Literal["json", "stream-json"] = "stream-json",
    nested: bool = False,
) -> list[str]:
    """The argv of one ``claude -p`` run. Never contains the prompt.

    A new run pre-assigns ``--session-id`` so that even a run killed at its deadline can be
    resumed; ``resume`` continues that session with ``--resume``. ``nested`` allows the
    orchestrator's nested-dispatch tools without a permission prompt.
    """
    argv = ["claude", "-p", "--output-format", output_format]
    if output_format == "stream-json":
        argv.append("--verbose")  # claude refuses stream-json with -p otherwise
    chosen_model = model or agent.model
    if chosen_model:
        argv += ["--model", chosen_model]
    argv += ["--permission-mode", agent.permission_mode]
    # One flag per tool: a pattern such as "Bash(git log:*)" may hold spaces or commas.
    for tool in agent.allowed_tools:
        argv += ["--allowedTools", tool]
    if nested:
        for name in NESTED_TOOLS:
            argv += ["--allowedTools", f"mcp__{GATEWAY_SERVER}__{name}"]
    for tool in agent.disallowed_tools:
        argv += ["--disallowedTools", tool]
    argv += ["--append-system-prompt", system_prompt(agent)]
    if max_budget_usd is not None:
        argv += ["--max-budget-usd", f"{max_budget_usd:.6f}".rstrip("0").rstrip(".")]
    argv += ["--resume", session_id] if resume else ["--session-id", session_id]
    if mcp_config_path:
        # Strict: only the servers we pass, so the project's file cannot add a second copy.
        argv += ["--mcp-config", mcp_config_path, "--strict-mcp-config"]
    return argv


def claude_env(
    *,
    base_url: str,
    run_token: str,
    config_dir: str,
    uid: int,
    api_timeout_ms: int,
    home: str | None = None,
    max_retries: int = 4,
    mcp_tool_timeout_ms: int = 24 * 3600 * 1000,
) -> dict[str, str]:
    """Environment of ``claude`` in the container.

    ``run_token`` is the per-run token the gateway accepts in place of an API key; the real
    credential never enters the container. ``HOME`` is set only when ``home`` is given;
    otherwise the container's own (writable) ``HOME`` applies: with a read-only root
    filesystem, a guess such as the config dir's parent may not be writable.
    """
    env = {
        # Exactly one request per model turn, nothing to api.anthropic.com, no DNS lookups.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        # A few retries (~7 s with claude's backoff) bridge an orchestrator restart that
        # re-attaches the run; retrying for minutes would only hide a rejected token.
        "CLAUDE_CODE_MAX_RETRIES": str(max_retries),
        "API_TIMEOUT_MS": str(api_timeout_ms),
        # Nested dispatches are tool calls that may run as long as their own timeout.
        "MCP_TOOL_TIMEOUT": str(mcp_tool_timeout_ms),
        "CLAUDE_CONFIG_DIR": config_dir,
        "ANTHROPIC_BASE_URL": base_url.rstrip("/"),
        "ANTHROPIC_API_KEY": run_token,
    }
    if home:
        env["HOME"] = home
    if uid == 0:
        # claude refuses bypassPermissions as root unless told it is in a sandbox (it is).
        env["IS_SANDBOX"] = "1"
    return env


def project_mcp_config(project_dir: Path) -> dict[str, Any] | None:
    """The project's ``.mcp.json`` (``{"mcpServers": {...}}``), or None when it has none."""
    path = project_dir / MCP_FILE
    try:
        # Never followed: the agent could make it a symlink to any host file and read that
        # back in the --mcp-config the host writes into its container.
        raw = read_file(project_dir, MCP_FILE, limit=MCP_FILE_LIMIT)
    except RefusedPath as exc:
        raise ConfigError(
            f"{path} {exc.reason}; a project's files are read without following symlinks",
            hint=f"Make {path} a regular file of at most {MCP_FILE_LIMIT} bytes, or remove it.",
            path=str(path),
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", path=str(path)) from exc
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"{path} is not valid JSON: {exc}",
            hint=f"Fix {path} (it must hold {{\"mcpServers\": {{...}}}}) or remove it.",
            path=str(path),
        ) from exc
    servers = data.get("mcpServers", {}) if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise ConfigError(
            f"{path}: expected an object with an \"mcpServers\" object",
            hint=f"Fix {path} (it must hold {{\"mcpServers\": {{...}}}}) or remove it.",
            path=str(path),
        )
    return {"mcpServers": servers}


def merged_mcp_config(
    project: dict[str, Any] | None, gateway: tuple[str, str] | None
) -> dict[str, Any] | None:
    """The project's servers plus, when ``gateway`` = (url, token) is given, the orchestrator's.

    The orchestrator's entry replaces any project server of the same name, so a project file
    cannot point nested dispatch elsewhere. None when there is no server at all.
    """
    servers: dict[str, Any] = dict((project or {}).get("mcpServers") or {})
    if gateway is not None:
        url, token = gateway
        servers[GATEWAY_SERVER] = {
            "type": "http",
            "url": url,
            "headers": {"Authorization": f"Bearer {token}"},
        }
    return {"mcpServers": servers} if servers else None
