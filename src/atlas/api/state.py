"""What the routes find in `app.state`, typed.

Routes are plain module-level functions of a `Request` (see `atlas.api.app`); what they serve comes from the app,
set once by `create_app`: the daemon and the per-app stream hub. These accessors give them their types back
(Starlette's `State` is untyped) at the cost of two attribute look-ups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from starlette.requests import Request

if TYPE_CHECKING:
    from atlas.api.streams import StreamHub
    from atlas.runtime.daemon import Daemon


def daemon_of(request: Request) -> Daemon:
    return cast("Daemon", request.app.state.daemon)


def streams_of(request: Request) -> StreamHub:
    return cast("StreamHub", request.app.state.streams)
