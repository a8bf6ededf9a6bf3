"""What a caller may do: every session (and so its cells, worker, lane, RemoteRefs and blobs) and every job belongs to
the user who made it; another user naming it is refused, an admin is not.

Handlers ask here about each object they touch; the one line a refused user reads says whose the object is not,
never whose it is. Session owners are journaled, so a restarted broker still knows them.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from gpucell.broker.auth import Identity
from gpucell.broker.refusal import Abort
from gpucell.protocol import gpucell_pb2 as pb


def _denied(what: str, identity: Identity) -> Abort:
    return Abort(grpc.StatusCode.PERMISSION_DENIED, pb.REASON_NOT_OWNER, f"{what} is not {identity.user}'s")


class Owners:
    """Session and job owners, and the checks every handler makes against them."""

    def __init__(self, remember: Callable[[str, str, str], None] | None = None,
                 known: dict[tuple[str, str], str] | None = None) -> None:
        self._remember = remember or (lambda kind, key, owner: None)
        self.sessions: dict[str, str] = {k: v for (kind, k), v in (known or {}).items() if kind == "session"}
        self.jobs: dict[str, str] = {k: v for (kind, k), v in (known or {}).items() if kind == "job"}

    def session(self, identity: Identity, session_id: str) -> None:
        """Refuse another user's session (an unknown one is nobody's: it holds nothing yet)."""
        owner = self.sessions.get(session_id)
        if session_id and owner is not None and owner != identity.user and not identity.admin:
            raise _denied("this session", identity)

    def claim(self, identity: Identity, session_id: str) -> None:
        """The first cell of a session makes it the caller's; a later one must come from the same user."""
        self.session(identity, session_id)
        if session_id and session_id not in self.sessions:
            self.sessions[session_id] = identity.user
            self._remember("session", session_id, identity.user)

    def mine(self, identity: Identity, session_id: str) -> bool:
        """Whether status may show this session (and its worker, cells, usage) to the caller in full."""
        return self.sessions.get(session_id) == identity.user

    def job(self, identity: Identity, job_id: str) -> None:
        owner = self.jobs.get(job_id)
        if owner is not None and owner != identity.user and not identity.admin:
            raise _denied("this job", identity)

    def sees_job(self, identity: Identity, job_id: str) -> bool:
        return identity.admin or self.jobs.get(job_id) == identity.user

    def own_job(self, identity: Identity, job_id: str) -> None:
        self.jobs[job_id] = identity.user
        self._remember("job", job_id, identity.user)

    def release_any(self, identity: Identity) -> None:
        """Releasing workers without naming a session (every session's) is an operator's act."""
        if not identity.admin:
            raise Abort(grpc.StatusCode.PERMISSION_DENIED, pb.REASON_NOT_OWNER,
                        f"releasing every session's workers is for admins, and {identity.user} is not one")

    def user_of(self, session_id: str) -> str:
        return self.sessions.get(session_id, "")
