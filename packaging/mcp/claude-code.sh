#!/bin/sh
# Register agentd-mcp with Claude Code (user scope). The shim starts the daemon if needed.
claude mcp add --scope user agentd -- agentd-mcp --agent-type claude-code
