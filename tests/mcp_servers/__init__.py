"""Real MCP servers, written with the official `mcp` SDK, that tests start as child processes."""
