"""Running out of room: a full or read-only disk, or database, is a clear 507, not a 500.

What is already stored stays as it was (files are replaced by rename, database writes
are transactions): the caller is told where space ran out and that retrying once there
is space again will work.
"""

from __future__ import annotations

import errno
from pathlib import Path

from sqlalchemy.engine import make_url

from fluxedit.config import Settings
from fluxedit.errors import FluxeditError

# OSError numbers that mean "no room here": full, over quota, over the file size limit,
# read-only, not writable for this user.
_NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES})
# SQLite (primary result codes): SQLITE_READONLY, SQLITE_FULL; and SQLITE_IOERR_WRITE, what a
# write the file size limit refuses (EFBIG) comes back as.
_SQLITE_NO_ROOM = frozenset({8, 13})
_SQLITE_IOERR_WRITE = 778
_POSTGRES_DISK_FULL = "53100"


class InsufficientStorage(FluxeditError):
    code = "insufficient_storage"
    status = 507


def no_room(where: str) -> InsufficientStorage:
    return InsufficientStorage(
        f"The server cannot store anything right now: {where} is full or not writable. Nothing was stored, "
        "and what was stored before is kept; retry once there is space again."
    )


def is_no_room(exc: BaseException) -> bool:
    """Whether `exc` (an OSError, or a database driver's error, bare or wrapped by SQLAlchemy)
    says the disk or database has no room for a write."""
    cause = getattr(exc, "orig", None) or exc
    if isinstance(cause, OSError):
        return cause.errno in _NO_ROOM_ERRNOS
    code = getattr(cause, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_NO_ROOM or code == _SQLITE_IOERR_WRITE
    return getattr(cause, "sqlstate", None) == _POSTGRES_DISK_FULL


def database_location(settings: Settings) -> str:
    """Where the database keeps its data, for a message: the SQLite file's folder, else the server."""
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        folder = Path(url.database).expanduser().parent
        return f"the data directory {folder}" if folder == settings.data_dir else f"the database's folder {folder}"
    return f"the database server ({url.get_backend_name()})"
