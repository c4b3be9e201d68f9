#!/bin/sh
# Register agentd-mcp with Claude Code (user scope). The shim starts the daemon if needed.
# The same as `agentd mcp install --client claude-code`, which edits ~/.claude.json directly.
claude mcp add --scope user agentd -- agentd-mcp --agent-type claude-code
