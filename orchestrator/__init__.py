"""ad-sandbox: callable Claude Code agents, one Docker container per run."""

__version__ = "0.1.0"

CLAUDE_VERSION = "2.1.332"
"""The pinned `claude` CLI version baked into the agent image."""
