"""Workspace chat (issue #17): durable chats on the bus, a chat agent whose tools are the workspace's jobs, its
memory and the MCP tools it names, and replies recorded as they stream.

- `records.py`: a chat's records and the pure fold to its messages; the SSE events of a turn.
- `service.py`: `ChatService`: start a turn, list / read / retitle / delete chats, follow a turn, recovery.
- `turn.py`: the model, the prompt, the history and the tool loop of one turn; the `Recorder`.
- `jobtools.py`: the jobs as tools, triggered through the accept pipeline with an idempotency key per call.
- `tools.py`: one tool runner over several tool sets.
"""
