"""Files under a local directory, served through the API's signed /files/ URLs."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from fluxedit.storage.base import check_key, guess_content_type
from fluxedit.storage.signing import UrlSigner
from fluxedit.storage.space import is_no_room, no_room

# Content types live in a parallel hidden tree; keys cannot start with ".", so no clash. Only a type
# other than the key's name implies gets a file there: the common put (x.png as image/png) is one
# file and one fsync, not two.
_TYPES_DIR = ".types"
_PROBE_BYTES = 4096  # a page: a full disk refuses even that


class LocalStorage:
    """Objects as files under `root`; a content type the key's name does not imply kept in `root/.types/<key>`."""

    def __init__(self, root: Path, signer: UrlSigner) -> None:
        self.root = Path(root)
        self.signer = signer

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _type_path(self, key: str) -> Path:
        return self.root / _TYPES_DIR / check_key(key)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.put_file(key, io.BytesIO(data), content_type)

    def put_file(self, key: str, file: BinaryIO, content_type: str) -> None:
        type_path, path = self._type_path(key), self._path(key)
        implied = content_type == guess_content_type(key)
        with self._no_room_is_507():
            if not implied:
                _write_atomic(type_path, io.BytesIO(content_type.encode()))
            _write_atomic(path, file)
        if implied:
            # A put over a key once stored with another type: its sidecar would now lie. Removed after
            # the object is in place, so a failed (e.g. full-disk) put leaves the old pair consistent.
            type_path.unlink(missing_ok=True)

    def check_writable(self) -> None:
        """Write (and remove) a small probe file: a full or read-only disk refuses it."""
        with self._no_room_is_507():
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".probe-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(b"\0" * _PROBE_BYTES)
                    f.flush()
            finally:
                os.unlink(probe)

    @contextmanager
    def _no_room_is_507(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if not is_no_room(exc):
                raise
            raise no_room(f"the files directory {self.root}") from exc

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def content_type(self, key: str) -> str:
        if not self._path(key).is_file():
            raise FileNotFoundError(key)
        try:
            return self._type_path(key).read_text().strip()
        except FileNotFoundError:
            return guess_content_type(key)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
        self._type_path(key).unlink(missing_ok=True)

    def url(self, key: str, base_url: str) -> str:
        return base_url.rstrip("/") + self.signer.signed_path(check_key(key))

    def sweep(self, max_age_s: float) -> int:
        """Remove files (and leftover temp files) last modified over `max_age_s` ago."""
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - max_age_s
        removed = 0
        for dirpath, _dirnames, filenames in os.walk(self.root, topdown=False):
            directory = Path(dirpath)
            for name in filenames:
                path = directory / name
                try:
                    if path.stat().st_mtime >= cutoff:
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue  # another process swept or deleted it first
                if not name.startswith(".") and _TYPES_DIR not in path.relative_to(self.root).parts:
                    removed += 1
                    (self.root / _TYPES_DIR / path.relative_to(self.root)).unlink(missing_ok=True)
            if directory != self.root:
                try:
                    directory.rmdir()  # only succeeds when empty
                except OSError:
                    pass
        return removed


def _write_atomic(path: Path, source: BinaryIO) -> None:
    # Temp file in the same directory, then rename: readers see the old or the new file, never half.
    for attempt in range(3):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            break
        except FileNotFoundError:  # a concurrent sweep removed the empty directory
            if attempt == 2:
                raise
    try:
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(source, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
