"""Storage: local files and S3 (moto's real HTTP server), signed URLs, sweeping."""

from __future__ import annotations

import io
import os
import stat
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from fluxedit.config import Settings
from fluxedit.errors import ImageInputError
from fluxedit.storage import (
    InvalidKey,
    LocalStorage,
    S3Storage,
    UrlSigner,
    load_secret,
    open_storage,
    resolve_issued_url,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 100
UNSAFE_KEYS = [
    "../escape.png",
    "outputs/../../escape.png",
    "/etc/passwd",
    "a//b.png",
    "a/./b.png",
    ".types/x",
    "outputs/.hidden",
    "a\\b.png",
    "",
    "outputs/",
    "spaces here.png",
    "x" * 600,
]


def _signed(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    return parts.path.removeprefix("/files/"), int(query["expires"][0]), query["sig"][0]


@pytest.fixture
def signer() -> UrlSigner:
    return UrlSigner(b"0123456789abcdef-test-secret", expiry_s=3600)


@pytest.fixture
def local(tmp_path: Path, signer: UrlSigner) -> LocalStorage:
    return LocalStorage(tmp_path / "files", signer)


# --- local files --------------------------------------------------------------------


def test_local_put_get_keeps_bytes_and_content_type(local: LocalStorage) -> None:
    local.put("outputs/job1/0.png", PNG, "image/png")
    local.put("uploads/key1/abc", b"webp bytes", "image/webp")  # no extension: the type is kept anyway
    assert local.get("outputs/job1/0.png") == PNG
    assert local.content_type("outputs/job1/0.png") == "image/png"
    assert local.content_type("uploads/key1/abc") == "image/webp"
    assert (local.root / "outputs/job1/0.png").read_bytes() == PNG


def test_local_put_replaces_and_leaves_no_temp_files(local: LocalStorage) -> None:
    local.put("outputs/job1/0.jpeg", b"first", "image/jpeg")
    local.put("outputs/job1/0.jpeg", b"second", "image/jpeg")
    assert local.get("outputs/job1/0.jpeg") == b"second"
    assert sorted(p.name for p in (local.root / "outputs/job1").iterdir()) == ["0.jpeg"]


def test_put_file_stores_a_stream_read_in_pieces(local: LocalStorage) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: several reads of the stream
    local.put_file("uploads/k1/big.png", io.BufferedReader(io.BytesIO(big)), "image/png")
    assert local.get("uploads/k1/big.png") == big
    assert local.content_type("uploads/k1/big.png") == "image/png"


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_local_put_of_the_type_its_name_implies_is_one_file(local: LocalStorage) -> None:
    local.put("inputs/job1/0.png", PNG, "image/png")
    assert _files(local.root) == ["inputs/job1/0.png"]  # no .types sidecar: one file, one fsync
    assert local.content_type("inputs/job1/0.png") == "image/png"


def test_local_put_of_another_type_keeps_a_sidecar_and_a_later_put_never_leaves_it_stale(
    local: LocalStorage,
) -> None:
    local.put("uploads/k1/a.png", b"webp bytes", "image/webp")
    assert _files(local.root) == [".types/uploads/k1/a.png", "uploads/k1/a.png"]
    assert local.content_type("uploads/k1/a.png") == "image/webp"
    local.put("uploads/k1/a.png", PNG, "image/png")  # now the type its name implies: the sidecar goes
    assert _files(local.root) == ["uploads/k1/a.png"]
    assert local.content_type("uploads/k1/a.png") == "image/png"
    local.put("uploads/k1/a.png", b"jpeg bytes", "image/jpeg")
    local.put("uploads/k1/a.png", b"webp bytes", "image/webp")  # rewritten, not kept from before
    assert local.content_type("uploads/k1/a.png") == "image/webp"


def test_local_delete_and_sweep_leave_no_sidecar_and_need_none(local: LocalStorage) -> None:
    local.put("outputs/job1/0.png", PNG, "image/png")
    local.put("outputs/job1/1.png", b"webp bytes", "image/webp")
    local.delete("outputs/job1/0.png")  # no sidecar to remove: no error
    local.delete("outputs/job1/1.png")
    assert _files(local.root) == []
    local.put("outputs/old/0.png", PNG, "image/png")
    local.put("outputs/old/1.png", b"webp bytes", "image/webp")
    two_hours_ago = time.time() - 7200
    for path in local.root.rglob("*"):
        if path.is_file():
            os.utime(path, (two_hours_ago, two_hours_ago))
    assert local.sweep(3600) == 2
    assert _files(local.root) == []


def test_local_missing_and_delete(local: LocalStorage) -> None:
    with pytest.raises(FileNotFoundError):
        local.get("outputs/none/0.png")
    with pytest.raises(FileNotFoundError):
        local.content_type("outputs/none/0.png")
    local.put("outputs/job1/0.png", PNG, "image/png")
    local.delete("outputs/job1/0.png")
    local.delete("outputs/job1/0.png")  # already gone: no error
    with pytest.raises(FileNotFoundError):
        local.get("outputs/job1/0.png")


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_local_refuses_unsafe_keys(local: LocalStorage, tmp_path: Path, key: str) -> None:
    for call in (
        lambda: local.put(key, b"x", "image/png"),
        lambda: local.get(key),
        lambda: local.delete(key),
        lambda: local.url(key, "http://h"),
    ):
        with pytest.raises(InvalidKey) as info:
            call()
        assert info.value.code == "invalid_key"
    assert not (tmp_path / "escape.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["files"])


def test_local_url_is_signed_absolute_and_verifies(local: LocalStorage, signer: UrlSigner) -> None:
    local.put("outputs/job1/0.png", PNG, "image/png")
    url = local.url("outputs/job1/0.png", "https://edit.example.org/")
    assert url.startswith("https://edit.example.org/files/outputs/job1/0.png?expires=")
    key, expires, sig = _signed(url)
    assert key == "outputs/job1/0.png"
    assert 3500 < expires - time.time() <= 3600
    assert signer.verify(key, expires, sig)
    assert not signer.verify("outputs/job1/1.png", expires, sig)  # another key
    assert not signer.verify(key, expires + 1, sig)  # a longer life
    assert not signer.verify(key, expires, sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB"))
    assert not signer.verify(key, expires, "é" * 43)
    assert not UrlSigner(b"another-secret-of-16+bytes").verify(key, expires, sig)


def test_expired_signature_fails_verify(signer: UrlSigner) -> None:
    key, expires, sig = _signed("http://h" + signer.signed_path("outputs/j/0.png", expiry_s=-5))
    assert signer.signature_matches(key, expires, sig)
    assert not signer.verify(key, expires, sig)


def test_default_expiry_is_the_setting(tmp_path: Path) -> None:
    signer = UrlSigner.from_settings(Settings(data_dir=tmp_path))
    _, expires, _ = _signed("http://h" + signer.signed_path("outputs/j/0.png"))
    assert 24 * 3600 - 60 < expires - time.time() <= 24 * 3600


def test_local_sweep_removes_only_old_files(local: LocalStorage) -> None:
    local.put("outputs/old/0.png", PNG, "image/png")
    local.put("outputs/old/1.png", PNG, "image/png")
    local.put("outputs/new/0.png", PNG, "image/png")
    two_hours_ago = time.time() - 7200
    for name in ("0.png", "1.png"):
        os.utime(local.root / "outputs/old" / name, (two_hours_ago, two_hours_ago))
    assert local.sweep(3600) == 2
    with pytest.raises(FileNotFoundError):
        local.get("outputs/old/0.png")
    assert not (local.root / "outputs/old").exists()  # empty directories go too
    assert local.get("outputs/new/0.png") == PNG
    assert local.sweep(3600) == 0


def test_sweep_of_missing_root_is_zero(tmp_path: Path, signer: UrlSigner) -> None:
    assert LocalStorage(tmp_path / "nothing", signer).sweep(0) == 0


# --- the secret ---------------------------------------------------------------------------


def test_secret_is_persisted_private_and_stable(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = load_secret(settings)
    path = tmp_path / "data" / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(settings) == first and len(first) >= 32
    # A restart (a new signer from the same data_dir) accepts URLs signed before it.
    url = UrlSigner.from_settings(settings).signed_path("outputs/j/0.png")
    assert UrlSigner.from_settings(Settings(data_dir=tmp_path / "data")).verify(*_signed("http://h" + url))


def test_configured_secret_wins(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key="shared-by-all-api-processes")
    assert load_secret(settings) == b"shared-by-all-api-processes"
    assert not (tmp_path / "secret.key").exists()


# --- resolving URLs this server issued --------------------------------------------------------


def test_resolve_issued_url_any_host(local: LocalStorage, signer: UrlSigner) -> None:
    local.put("uploads/k/a.png", PNG, "image/png")
    url = local.url("uploads/k/a.png", "http://api-1.internal:8000")
    other_host = url.replace("http://api-1.internal:8000", "https://edit.example.org")
    assert resolve_issued_url(url, local, signer) == PNG
    assert resolve_issued_url(other_host, local, signer) == PNG


def test_resolve_leaves_other_urls_alone(local: LocalStorage, signer: UrlSigner) -> None:
    for url in (
        "https://example.org/cat.png",
        "https://example.org/files/cat.png",
        "data:image/png;base64,AAAA",
        "ftp://example.org/files/x.png?expires=1&sig=x",
    ):
        assert resolve_issued_url(url, local, signer) is None


def test_resolve_bad_or_expired_signature_is_a_clear_error(local: LocalStorage, signer: UrlSigner) -> None:
    local.put("uploads/k/a.png", PNG, "image/png")
    url = local.url("uploads/k/a.png", "http://h")
    cases = {
        url.replace("a.png", "b.png"): "did not make",
        url.replace("sig=", "sig=X"): "did not make",
        "http://h" + signer.signed_path("uploads/k/a.png", expiry_s=-5): "expired",
        "http://h/files/../secret.key?expires=9999999999&sig=abc": "not a valid file URL",
    }
    for bad, words in cases.items():
        with pytest.raises(ImageInputError) as info:
            resolve_issued_url(bad, local, signer)
        assert info.value.code == "input_forbidden"
        assert words in info.value.message


def test_resolve_swept_file_is_unreachable(local: LocalStorage, signer: UrlSigner) -> None:
    url = local.url("uploads/k/gone.png", "http://h")
    with pytest.raises(ImageInputError) as info:
        resolve_issued_url(url, local, signer)
    assert info.value.code == "input_unreachable"
    assert "no longer stored" in info.value.message


def test_open_storage_default_is_local_under_data_dir(tmp_path: Path) -> None:
    storage = open_storage(Settings(data_dir=tmp_path))
    assert isinstance(storage, LocalStorage)
    storage.put("outputs/j/0.png", PNG, "image/png")
    assert (tmp_path / "files/outputs/j/0.png").read_bytes() == PNG


# --- S3 (moto's standalone server over real HTTP) -------------------------------------------------


def _s3_settings(tmp_path: Path, s3_server, bucket: str, prefix: str = "", **extra) -> Settings:
    env = s3_server.settings_env(bucket, prefix)
    values = {name.removeprefix("FLUXEDIT_").lower(): value for name, value in env.items()}
    return Settings(data_dir=tmp_path, secret_key="s3-test-secret-0123456789", **values, **extra)


@pytest.fixture
def s3(tmp_path: Path, s3_server, s3_bucket: str) -> S3Storage:
    storage = open_storage(_s3_settings(tmp_path, s3_server, s3_bucket, "cluster-a"))
    assert isinstance(storage, S3Storage)
    return storage


def test_s3_put_get_lands_in_the_bucket(s3: S3Storage, s3_server, s3_bucket: str) -> None:
    s3.put("outputs/job1/0.png", PNG, "image/png")
    assert s3.get("outputs/job1/0.png") == PNG
    assert s3.content_type("outputs/job1/0.png") == "image/png"
    plain = s3_server.client().get_object(Bucket=s3_bucket, Key="cluster-a/outputs/job1/0.png")
    assert plain["Body"].read() == PNG and plain["ContentType"] == "image/png"


def test_s3_put_file_streams_into_the_bucket(s3: S3Storage) -> None:
    big = bytes(range(256)) * 40_000  # 10 MB: over boto3's multipart threshold
    s3.put_file("uploads/k1/big.png", io.BufferedReader(io.BytesIO(big)), "image/png")
    assert s3.get("uploads/k1/big.png") == big
    assert s3.content_type("uploads/k1/big.png") == "image/png"


def test_s3_missing_delete_and_unsafe_keys(s3: S3Storage) -> None:
    with pytest.raises(FileNotFoundError):
        s3.get("outputs/none/0.png")
    with pytest.raises(FileNotFoundError):
        s3.content_type("outputs/none/0.png")
    s3.put("outputs/job1/0.png", PNG, "image/png")
    s3.delete("outputs/job1/0.png")
    s3.delete("outputs/job1/0.png")
    with pytest.raises(FileNotFoundError):
        s3.get("outputs/job1/0.png")
    for key in UNSAFE_KEYS:
        with pytest.raises(InvalidKey):
            s3.put(key, b"x", "image/png")


def test_s3_presigned_url_serves_the_bytes_over_http(s3: S3Storage, s3_server) -> None:
    s3.put("outputs/job1/0.jpeg", b"\xff\xd8jpeg bytes", "image/jpeg")
    url = s3.url("outputs/job1/0.jpeg", "http://api.invalid")
    assert url.startswith(s3_server.endpoint_url)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=86400" in url
    answer = httpx.get(url)
    assert answer.status_code == 200
    assert answer.content == b"\xff\xd8jpeg bytes"
    assert answer.headers["content-type"] == "image/jpeg"


def test_s3_private_bucket_urls_go_through_the_api(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    settings = _s3_settings(tmp_path, s3_server, s3_bucket, s3_presign=False)
    signer = UrlSigner.from_settings(settings)
    storage = open_storage(settings, signer)
    storage.put("uploads/k/a.png", PNG, "image/png")
    url = storage.url("uploads/k/a.png", "https://edit.example.org")
    assert url.startswith("https://edit.example.org/files/uploads/k/a.png?expires=")
    assert signer.verify(*_signed(url))
    assert resolve_issued_url(url, storage, signer) == PNG


def test_s3_sweep_stays_inside_the_prefix(s3: S3Storage, s3_server, s3_bucket: str) -> None:
    for n in range(3):
        s3.put(f"outputs/job{n}/0.png", PNG, "image/png")
    s3_server.client().put_object(Bucket=s3_bucket, Key="someone-else/keep.png", Body=b"theirs")
    assert s3.sweep(3600) == 0  # all recent
    assert s3.sweep(-60) == 3  # a cutoff in the future: everything under the prefix is "old"
    listing = s3_server.client().list_objects_v2(Bucket=s3_bucket)
    assert [obj["Key"] for obj in listing["Contents"]] == ["someone-else/keep.png"]
