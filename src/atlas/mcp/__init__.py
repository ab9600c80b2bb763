"""MCP servers of a workspace (`tools.mcp`, issue #14): started on first use, pooled per workspace."""
