"""Objects in an S3-compatible bucket (AWS, MinIO, Ceph, R2, ...) through boto3."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from fluxedit.config import Settings
from fluxedit.storage.base import check_key
from fluxedit.storage.signing import UrlSigner


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/"); the prefix may be empty."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"storage_url {url!r} is not of the form s3://bucket/prefix")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


class S3Storage:
    """Objects under `prefix` in `bucket`.

    url() gives a presigned GET when `presign` is true (clients fetch from the bucket);
    otherwise the API's signed /files/ path, for buckets only the cluster can reach.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        signer: UrlSigner,
        *,
        presign: bool = True,
        expiry_s: int | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.signer = signer
        self.presign = presign
        self.expiry_s = signer.expiry_s if expiry_s is None else expiry_s

    @classmethod
    def from_settings(cls, settings: Settings, signer: UrlSigner) -> S3Storage:
        import boto3  # the cluster extra; only needed when S3 is configured
        from botocore.config import Config

        bucket, prefix = parse_s3_url(settings.storage_url or "")
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": settings.s3_addressing_style}),
        )
        return cls(client, bucket, prefix, signer, presign=settings.s3_presign, expiry_s=settings.url_expiry_s)

    def _object(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._object(key), Body=data, ContentType=content_type)

    def put_file(self, key: str, file: BinaryIO, content_type: str) -> None:
        # boto3 reads it in parts (a multipart upload once it is large), never all at once.
        self.client.upload_fileobj(file, self.bucket, self._object(key), ExtraArgs={"ContentType": content_type})

    def check_writable(self) -> None:
        """Nothing to check: an object store does not fill up, and a bad credential shows on put."""

    def get(self, key: str) -> bytes:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._object(key))
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None
        return answer["Body"].read()

    def content_type(self, key: str) -> str:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._object(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(key) from None
            raise
        return head.get("ContentType") or "application/octet-stream"

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object(key))

    def url(self, key: str, base_url: str) -> str:
        if not self.presign:
            return base_url.rstrip("/") + self.signer.signed_path(check_key(key))
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._object(key)}, ExpiresIn=self.expiry_s
        )

    def sweep(self, max_age_s: float) -> int:
        """Delete objects under the prefix whose LastModified is over `max_age_s` ago."""
        cutoff = datetime.fromtimestamp(time.time() - max_age_s, tz=UTC)
        removed = 0
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            old = [{"Key": obj["Key"]} for obj in page.get("Contents", []) if obj["LastModified"] < cutoff]
            if old:  # a page holds at most 1000 keys, the delete_objects limit
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": old, "Quiet": True})
                removed += len(old) - len(answer.get("Errors", []))
        return removed
