"""The core service: one object every face (CLI, MCP, the gateway) calls."""
