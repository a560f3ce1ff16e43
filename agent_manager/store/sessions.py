"""Browser sessions kept on the server (``web.auth``), so they can be ended before they expire.

Why server-side rather than a signed cookie: logging out, rotating a token and deleting a user
must end a session someone copied (a cookie is a bearer credential). The cookie holds 256
random bits; the table keeps only their SHA-256, so a copy of the database holds no usable
cookie. Each row also keeps a hash of the credential that logged in (``credential``): a
session whose token has since changed is refused even if its row was somehow left behind.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agent_manager.store.database import Database, Queryable, now

ID_BYTES = 32
TOUCH_EVERY = timedelta(minutes=1)  # last_seen is a hint for people, not worth a write per request


@dataclass(frozen=True)
class Session:
    id_hash: str
    user_id: str | None  # None: the admin of the admin token
    credential: str
    expires_at: str
    last_seen: str


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def credential_of(token: str) -> str:
    """What a session remembers of the admin token that opened it (users: their token hash)."""
    return _hash("agent-manager-admin-token:" + token)


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def create(db: Database, user_id: str | None, credential: str, max_age_s: float) -> str:
    """A new session; returns the cookie value (never stored). Expired rows are swept on the way."""
    value = secrets.token_urlsafe(ID_BYTES)
    moment = datetime.now(UTC)
    with db.transaction() as conn:
        conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (_stamp(moment),))
        conn.execute("INSERT INTO sessions (id_hash, user_id, credential, created_at, last_seen, expires_at)"
                     " VALUES (?, ?, ?, ?, ?, ?)", (_hash(value), user_id, credential, _stamp(moment), _stamp(moment),
                                                    _stamp(moment + timedelta(seconds=max_age_s))))
    return value


def find(db: Queryable, value: str, max_age_s: float | None = None) -> Session | None:
    """The live session of a cookie value, or None (unknown, ended or expired). ``max_age_s``:
    the session lifetime now in force — lowering it shortens sessions opened before too."""
    if not value or len(value) > 128:
        return None
    oldest = "" if max_age_s is None else _stamp(datetime.now(UTC) - timedelta(seconds=max_age_s))
    row = db.one("SELECT id_hash, user_id, credential, expires_at, last_seen FROM sessions"
                 " WHERE id_hash = ? AND expires_at > ? AND created_at > ?", (_hash(value), now(), oldest))
    if row is None:
        return None
    return Session(row["id_hash"], row["user_id"], row["credential"], row["expires_at"], row["last_seen"])


def touch(db: Database, session: Session) -> None:
    moment = datetime.now(UTC)
    if datetime.fromisoformat(session.last_seen) + TOUCH_EVERY <= moment:
        with db.transaction() as conn:
            conn.execute("UPDATE sessions SET last_seen = ? WHERE id_hash = ?", (_stamp(moment), session.id_hash))


def end(db: Database, value: str) -> bool:
    """Log out: the session of this cookie value stops working now."""
    with db.transaction() as conn:
        return conn.execute("DELETE FROM sessions WHERE id_hash = ?", (_hash(value),)).rowcount > 0


def end_user(db: Database, user_id: str | None) -> int:
    """End every session of a user (``None``: of the admin): token rotated, user deleted."""
    with db.transaction() as conn:
        if user_id is None:
            return conn.execute("DELETE FROM sessions WHERE user_id IS NULL").rowcount
        return conn.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,)).rowcount
