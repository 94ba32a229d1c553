"""Fetch a job's reference images: `Fetcher` (one per process) and `fetch_references`.

data: URIs and URLs this server issued are read without the network; the rest are
downloaded concurrently, each by `fluxedit.images.download` (redirects checked hop
by hop against the address policy, size caps). When several references fail, the
earliest one's error is raised.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
import threading
from collections.abc import Coroutine

import httpx

from fluxedit import __version__, netpolicy
from fluxedit.config import Settings
from fluxedit.errors import ImageInputError
from fluxedit.images.download import Downloader, ResolveLocal, UrlFailure, capped, check_address, decode_data_uri
from fluxedit.netpolicy import Resolver, system_resolver

__all__ = ["Fetcher", "fetch_references", "afetch_references", "check_address"]


class Fetcher:
    """Reads reference images for one process (a worker process, `fluxedit edit`), for any number of jobs.

    data: URIs are decoded, and URLs this service issued are read from storage, in
    the calling thread: no event loop, no HTTP client. Only inputs that need the
    network open an HTTP client, one per call. The costly part of a client, its TLS
    context (loading the CA bundle: ~40 ms, against ~1 ms for the client around it),
    is made once, by the first call that needs a connection, and shared by the
    clients after it. `clients_opened` and `tls_contexts_made` count both, so
    callers can see that a job of data: URIs opened nothing.

    Safe to share between threads. `resolver` replaces getaddrinfo.
    """

    def __init__(
        self, settings: Settings, *, resolve_local: ResolveLocal | None = None, resolver: Resolver | None = None
    ) -> None:
        self.settings = settings
        self.resolve_local = resolve_local
        self.resolver = resolver or system_resolver
        self.clients_opened = 0
        self.tls_contexts_made = 0
        self._tls: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def fetch(self, urls: list[str]) -> list[bytes]:
        """Every reference's bytes, in the order given; network fetches run concurrently.

        Safe from worker threads; called from inside a running loop, the network part
        uses a private thread. Raises `ImageInputError` (codes input_unreachable,
        input_too_large, input_not_image, input_forbidden; `index` = position) for the
        first failing URL.
        """
        found, errors, remote = self._read_offline(urls)
        remote = [i for i in remote if i < _first_index(errors, len(urls))]  # a later failure cannot win
        if remote:
            try:
                found.update(_run(self._fetch_remote(urls, remote)))
            except ImageInputError as exc:
                errors.append(exc)
        if errors:
            raise min(errors, key=_error_rank)
        return [found[i] for i in range(len(urls))]

    async def afetch(self, urls: list[str]) -> list[bytes]:
        """The async form of `fetch` (the offline reads run in a thread)."""
        return await asyncio.to_thread(self.fetch, urls)

    def _read_offline(self, urls: list[str]) -> tuple[dict[int, bytes], list[ImageInputError], list[int]]:
        """(bytes read without the network by index, their failures, the indexes that need the network)."""
        found: dict[int, bytes] = {}
        errors: list[ImageInputError] = []
        remote: list[int] = []
        cap = self.settings.max_image_bytes
        for index, url in enumerate(urls):
            try:
                if url[:5].lower() == "data:":
                    found[index] = decode_data_uri(url, cap)
                    continue
                local = self.resolve_local(url) if self.resolve_local is not None else None
                if local is None:
                    remote.append(index)
                else:
                    found[index] = capped(local, cap)
            except UrlFailure as failure:
                errors.append(failure.error(url, index))
            except ImageInputError as exc:
                errors.append(exc)
        return found, errors, remote

    async def _fetch_remote(self, urls: list[str], indexes: list[int]) -> dict[int, bytes]:
        downloader = Downloader(
            self.settings, open_client=self.open_client, resolve_local=self.resolve_local, resolver=self.resolver
        )
        try:
            async with downloader, asyncio.TaskGroup() as group:
                tasks = {i: group.create_task(downloader.download(urls[i], i)) for i in indexes}
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None
        return {i: task.result() for i, task in tasks.items()}

    def open_client(self) -> httpx.AsyncClient:
        """A new pinned HTTP client (redirects followed by hand: every hop checked) on the shared TLS context."""
        with self._lock:
            if self._tls is None:
                self._tls = httpx.create_ssl_context(trust_env=False)
                self.tls_contexts_made += 1
            self.clients_opened += 1
        settings = self.settings
        return httpx.AsyncClient(
            verify=self._tls,
            timeout=httpx.Timeout(settings.fetch_total_timeout_s, connect=settings.fetch_connect_timeout_s),
            headers={"User-Agent": f"fluxedit/{__version__}", "Accept": "image/*,*/*;q=0.5"},
            **netpolicy.pinned_client_options(asynchronous=True),
        )


def fetch_references(
    urls: list[str],
    settings: Settings,
    *,
    resolve_local: ResolveLocal | None = None,
    resolver: Resolver | None = None,
) -> list[bytes]:
    """`Fetcher.fetch` on a fetcher of its own: for one call; a process with many jobs keeps a `Fetcher`."""
    return Fetcher(settings, resolve_local=resolve_local, resolver=resolver).fetch(urls)


async def afetch_references(
    urls: list[str],
    settings: Settings,
    *,
    resolve_local: ResolveLocal | None = None,
    resolver: Resolver | None = None,
) -> list[bytes]:
    """The async form of `fetch_references`."""
    return await Fetcher(settings, resolve_local=resolve_local, resolver=resolver).afetch(urls)


def _run(coro: Coroutine[object, object, dict[int, bytes]]) -> dict[int, bytes]:
    """Run `coro` to its end: on a loop of its own, in a private thread when this thread runs one already."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fluxedit-fetch") as pool:
        return pool.submit(asyncio.run, coro).result()


def _error_rank(error: ImageInputError) -> int:
    return error.index if error.index is not None else -1


def _first_index(errors: list[ImageInputError], default: int) -> int:
    return min((_error_rank(e) for e in errors), default=default)


def _first_error(group_error: BaseExceptionGroup) -> BaseException:
    """The failure of the earliest URL; anything but an input error (a bug) wins."""
    errors = list(_leaves(group_error))
    bugs = [e for e in errors if not isinstance(e, ImageInputError)]
    if bugs:
        return bugs[0]
    return min(errors, key=_error_rank)


def _leaves(error: BaseException):
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error
