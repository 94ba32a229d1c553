"""API keys: only the SHA-256 of each secret is stored; the secret is shown once, at creation.

Each key also has a webhook signing secret (`whsec_...`, the Standard Webhooks form),
made with it and kept in clear, since signing needs it; its owner can read it again
(GET /v1/webhooks/secret).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from fluxedit.errors import InvalidInput, NotFound
from fluxedit.jobs.db import Database, api_keys_table, key_limits_table, utc_now
from fluxedit.jobs.key_limits import KeyLimits, checked_limits

SECRET_PREFIX = "fe_"
WEBHOOK_SECRET_PREFIX = "whsec_"
_DISPLAY_PREFIX_CHARS = len(SECRET_PREFIX) + 8


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str  # the secret's first characters, to recognise it; not enough to use it
    created_at: datetime
    revoked_at: datetime | None = None
    limits: KeyLimits = KeyLimits()  # as set on the key (None: the Settings default)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def new_webhook_secret() -> str:
    """A random signing secret in the Standard Webhooks form: whsec_ + base64 of 32 bytes."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_K = api_keys_table.c
_L = key_limits_table.c


class KeyStore(Database):
    """API keys: only the SHA-256 of each secret is stored; the secret is shown once, at creation."""

    def create(self, name: str) -> tuple[str, str]:
        """A new key: (key_id, secret). The secret cannot be recovered later."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key_id = uuid.uuid4().hex
        with self._write() as conn:
            conn.execute(
                sa.insert(api_keys_table).values(
                    id=key_id,
                    name=name,
                    prefix=secret[:_DISPLAY_PREFIX_CHARS],
                    secret_sha256=_sha256(secret),
                    created_at=utc_now(),
                    webhook_secret=new_webhook_secret(),
                )
            )
        return key_id, secret

    def webhook_secret(self, key_id: str) -> str | None:
        """The key's webhook signing secret; None for a key id with no row (e.g. the unauthenticated mode's)."""
        with self._read() as conn:
            return conn.execute(sa.select(_K.webhook_secret).where(_K.id == key_id)).scalar_one_or_none()

    def fill_webhook_secrets(self) -> int:
        """Give every key without a webhook secret one (keys made before webhooks); returns how many."""
        with self._write() as conn:
            ids = conn.execute(sa.select(_K.id).where(_K.webhook_secret.is_(None))).scalars().all()
            for key_id in ids:
                conn.execute(
                    sa.update(api_keys_table)
                    .where(_K.id == key_id, _K.webhook_secret.is_(None))
                    .values(webhook_secret=new_webhook_secret())
                )
        return len(ids)

    def verify(self, secret: str) -> str | None:
        """The key id for an active key's secret, else None."""
        if not secret or len(secret) > 512:
            return None
        digest = _sha256(secret)
        with self._read() as conn:
            row = conn.execute(
                sa.select(_K.id, _K.secret_sha256).where(_K.secret_sha256 == digest, _K.revoked_at.is_(None))
            ).one_or_none()
        # The lookup is by hash, so timing reveals nothing about the secret; compare anyway.
        if row is None or not hmac.compare_digest(row.secret_sha256, digest):
            return None
        return row.id

    def list_keys(self) -> list[ApiKey]:
        limits = self.all_limits()
        with self._read() as conn:
            rows = conn.execute(
                sa.select(_K.id, _K.name, _K.prefix, _K.created_at, _K.revoked_at).order_by(_K.created_at)
            ).all()
        return [ApiKey(**r._mapping, limits=limits.get(r.id, KeyLimits())) for r in rows]

    def all_limits(self) -> dict[str, KeyLimits]:
        """Key id -> the limits set on it (keys without any are absent)."""
        with self._read() as conn:
            rows = conn.execute(sa.select(key_limits_table)).all()
        return {r.key_id: KeyLimits(**{k: v for k, v in r._mapping.items() if k != "key_id"}) for r in rows}

    def limits_of(self, key_id: str) -> KeyLimits:
        """The limits set on a key (all None when none were set)."""
        with self._read() as conn:
            row = conn.execute(sa.select(key_limits_table).where(_L.key_id == key_id)).one_or_none()
        return KeyLimits() if row is None else KeyLimits(**{k: v for k, v in row._mapping.items() if k != "key_id"})

    def set_limits(self, key_id_or_prefix: str, **limits: int | None) -> str:
        """Set the limits given (the others keep their values); returns the key id.

        Raises NotFound for no such active key, InvalidInput for a bad limit or an ambiguous prefix.
        """
        given = {k: v for k, v in checked_limits(**limits).items() if v is not None}
        key_id = self._one_active(key_id_or_prefix)
        if not given:
            return key_id
        with self._write() as conn:
            updated = conn.execute(sa.update(key_limits_table).where(_L.key_id == key_id).values(**given)).rowcount
            if not updated:
                conn.execute(sa.insert(key_limits_table).values(key_id=key_id, **given))
        return key_id

    def find_id(self, key_id_or_prefix: str) -> str:
        """The id of the key (active or revoked) with this id or displayed prefix."""
        return self._one_active(key_id_or_prefix, revoked_too=True)

    def _one_active(self, key_id_or_prefix: str, *, revoked_too: bool = False) -> str:
        match = sa.or_(_K.id == key_id_or_prefix, _K.prefix == key_id_or_prefix)
        if not revoked_too:
            match = sa.and_(match, _K.revoked_at.is_(None))
        with self._read() as conn:
            ids = conn.execute(sa.select(_K.id).where(match)).scalars().all()
        if len(ids) > 1:
            raise InvalidInput(f"{key_id_or_prefix!r} matches {len(ids)} keys; give the key id instead.")
        if not ids:
            raise NotFound(f"No active key {key_id_or_prefix!r}.")
        return ids[0]

    def revoke(self, key_id_or_prefix: str) -> bool:
        """Revoke the key with this id or displayed prefix; False when no active key matches.

        Raises InvalidInput when a prefix matches several keys.
        """
        match = sa.or_(_K.id == key_id_or_prefix, _K.prefix == key_id_or_prefix)
        with self._write() as conn:
            ids = conn.execute(sa.select(_K.id).where(match, _K.revoked_at.is_(None))).scalars().all()
            if len(ids) > 1:
                raise InvalidInput(f"{key_id_or_prefix!r} matches {len(ids)} keys; give the key id instead.")
            if not ids:
                return False
            conn.execute(sa.update(api_keys_table).where(_K.id == ids[0]).values(revoked_at=utc_now()))
        return True

    def count_active(self) -> int:
        with self._read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(_K.revoked_at.is_(None))).scalar_one())
