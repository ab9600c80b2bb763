"""The one domain error: a stable code, a message for people and optional structured details (spec §9).

The runtime and the config layer say *what* went wrong (`AtlasError("workspace_not_found", ...)`) and never how a
transport reports it: the HTTP status (and any header, such as `Retry-After`) of each code is decided in one table
in `atlas.api.errors`, so a code means the same thing whether it reaches an HTTP client, becomes the `errorCode`
of a cascading step (the accept pipeline raises it for cascades too) or stops `atlasd` at start-up.
"""

from __future__ import annotations

from typing import Any


class AtlasError(Exception):
    """A domain failure, named by `code` (snake_case, part of the API contract), with `message` and `details`.

    `details` is JSON-ready data (e.g. `[{path, message}]` issues, or the session record of a failed run) that
    clients may act on; None when the code has nothing more to say.
    """

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
