"""The `fluxedit` command: serve | worker | edit | keys | tiny-model."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

from fluxedit.config import Settings
from fluxedit.errors import FluxeditError, InvalidInput

ENGINE_FLAGS = ("device", "cpu_offload", "compile", "attention_backend", "fuse_qkv", "fp8", "vae_tiling")


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the flags given on the command line on top."""
    overrides = {name: getattr(args, name) for name in ENGINE_FLAGS if getattr(args, name, None) is not None}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    return Settings(**overrides)


def _engine_flags() -> argparse.ArgumentParser:
    """Flags for the diffusers engine; each defaults to its FLUXEDIT_* setting (see config.py)."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("engine (defaults: the FLUXEDIT_* settings)")
    group.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    group.add_argument("--cpu-offload", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument("--compile", choices=("auto", "off", "regional"), help="torch.compile the repeated blocks")
    group.add_argument("--attention-backend", help="native (PyTorch SDPA), _native_cudnn, flash, ...")
    group.add_argument("--fuse-qkv", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument("--fp8", action=argparse.BooleanOptionalAction, default=None, help="lossy float8 transformer")
    group.add_argument("--vae-tiling", action=argparse.BooleanOptionalAction, default=None)
    return parser


# --------------------------------------------------------------------------- serve


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.public_url:
        settings.public_url = args.public_url
    no_auth = args.no_auth or settings.allow_unauthenticated
    if no_auth and not _is_loopback(args.host):
        raise InvalidInput(
            f"--no-auth is only allowed on a loopback address (127.0.0.1, ::1, localhost), not {args.host}.",
            field="--no-auth",
        )
    tls = _tls_files(args)
    import uvicorn

    from fluxedit.api.app import create_app
    from fluxedit.runtime import open_runtime

    # --no-workers: this process only queues; with a broker, the Celery workers run the jobs regardless.
    runtime = open_runtime(settings, args.model, run_jobs=not args.no_workers)
    if not no_auth and runtime.keys.count_active() == 0:
        key_id, secret = runtime.keys.create("default")
        webhook_secret = runtime.keys.webhook_secret(key_id)
        print(
            f"Created the first API key (shown once, keep it): {secret} (its webhook signing secret: {webhook_secret})",
            flush=True,
        )
    scheme = "https" if tls else "http"
    print(f"fluxedit serving {', '.join(runtime.models)} on {scheme}://{args.host}:{args.port}", flush=True)
    uvicorn.run(
        create_app(runtime, allow_unauthenticated=no_auth),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        **tls,
    )
    return 0


def _tls_files(args: argparse.Namespace) -> dict[str, str]:
    """uvicorn's ssl_certfile/ssl_keyfile from --ssl-certfile/--ssl-keyfile: both or neither, files that exist."""
    given = {"ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile}
    if not any(given.values()):
        return {}
    if not all(given.values()):
        raise InvalidInput("--ssl-certfile and --ssl-keyfile go together; give both.", field="--ssl-keyfile")
    for name, path in given.items():
        flag = "--" + name.replace("_", "-")
        if not Path(path).is_file():
            raise InvalidInput(f"{flag} {path}: no such file.", field=flag)
    return given


# --------------------------------------------------------------------------- worker


def cmd_worker(args: argparse.Namespace) -> int:
    from fluxedit.jobs.celery_app import run_worker

    settings = _settings(args)
    return run_worker(settings, args.model) or 0


# --------------------------------------------------------------------------- keys


def cmd_keys(args: argparse.Namespace) -> int:
    from fluxedit.jobs.keys import KeyStore
    from fluxedit.jobs.migrate import upgrade_database

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    keys = KeyStore(settings.resolved_database_url)
    upgrade_database(keys.engine)  # `keys create` may come before the first `serve`
    if args.keys_command == "create":
        key_id, secret = keys.create(args.name)
        if _limit_args(args):
            keys.set_limits(key_id, **_limit_args(args))
        print(secret)  # alone on stdout: scripts capture it (KEY=$(fluxedit keys create))
        print(
            f"key id {key_id} ({args.name}); the key is shown once and stored only as a hash. "
            f"Its webhook signing secret: {keys.webhook_secret(key_id)} (GET /v1/webhooks/secret answers it again)",
            file=sys.stderr,
        )
    elif args.keys_command == "update":
        key_id = keys.set_limits(args.key, **_limit_args(args))
        print(f"{key_id}\t{keys.limits_of(key_id).describe()}")
    elif args.keys_command == "list":
        for key in keys.list_keys():
            state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            limits = key.limits.describe()
            print(f"{key.id}\t{key.prefix}…\t{key.name}\t{key.created_at:%Y-%m-%d %H:%M}\t{state}\t{limits}")
    elif args.keys_command == "usage":
        _print_usage(keys, args)
    elif args.keys_command == "revoke":
        if not keys.revoke(args.key):
            raise FluxeditError(f"No active key {args.key!r}.", code="not_found")
        print(f"revoked {args.key}")
    return 0


def _print_usage(keys, args: argparse.Namespace) -> None:
    from fluxedit.jobs.usage import UsageReader

    key_id = keys.find_id(args.key) if args.key else None
    print("date\tkey\tjobs\toutput_megapixels\tengine_seconds")
    for day in UsageReader(keys.engine).days(key_id=key_id, days=args.days):
        jobs = " ".join(f"{state}={n}" for state, n in sorted(day.jobs.items()))
        print(f"{day.day}\t{day.key_id}\t{jobs}\t{day.output_megapixels:.4f}\t{day.engine_seconds:.3f}")


def _limit_args(args: argparse.Namespace) -> dict[str, int]:
    from fluxedit.jobs.key_limits import LIMIT_NAMES

    return {name: getattr(args, name) for name in LIMIT_NAMES if getattr(args, name, None) is not None}


def _limit_flags() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("limits (unset: the FLUXEDIT_KEY_* defaults)")
    group.add_argument("--max-queued", type=int, help="queued jobs of this key, all models; more answer 429")
    group.add_argument("--max-running", type=int, help="jobs of this key running at once")
    group.add_argument("--requests-per-minute", type=int, help="submits per minute (per API process)")
    group.add_argument("--priority", type=int, help="higher goes first among the keys waiting (default 0)")
    return parser


# --------------------------------------------------------------------------- tiny-model


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from fluxedit.engines.tiny import save_tiny_model

    save_tiny_model(args.variant, Path(args.dir))
    print(f"saved a tiny random FLUX.2 [{args.variant}] pipeline to {args.dir} (it makes noise, not edits)")
    return 0


# --------------------------------------------------------------------------- edit


def cmd_edit(args: argparse.Namespace) -> int:
    from fluxedit.edit_cli import edit_locally, edit_on_server
    from fluxedit.schema import MAX_REFERENCES

    if len(args.image) > MAX_REFERENCES:
        raise InvalidInput(
            f"At most {MAX_REFERENCES} references (-i) are allowed; {len(args.image)} were given.", field="-i"
        )
    if args.server:
        return edit_on_server(args)
    return edit_locally(args, _settings(args))


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxedit", description="Multi-reference image editing with FLUX.2.")
    parser.add_argument(
        "--data-dir", help="jobs DB, files and model cache (env FLUXEDIT_DATA_DIR; default ~/.fluxedit)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    engine_flags = _engine_flags()

    serve = sub.add_parser("serve", parents=[engine_flags], help="run the API, the playground and in-process workers")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ID=SOURCE",
        help="serve model ID from SOURCE (a Hugging Face repo id, a folder, 'tiny' or 'bfl:flux-2-pro'); "
        "repeatable. '--model tiny' alone: the offline demo behind every standard id.",
    )
    serve.add_argument("--public-url", help="base URL used in answers (default: the request's)")
    serve.add_argument("--no-auth", action="store_true", help="no API keys (only on a loopback address)")
    serve.add_argument("--no-workers", action="store_true", help="queue only; Celery workers run the jobs")
    serve.add_argument("--ssl-certfile", help="serve HTTPS with this PEM certificate (chain); needs --ssl-keyfile")
    serve.add_argument("--ssl-keyfile", help="the PEM private key of --ssl-certfile")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", parents=[engine_flags], help="a Celery GPU worker for the given models")
    worker.add_argument("--model", action="append", default=[], metavar="ID=SOURCE", required=True)
    worker.set_defaults(func=cmd_worker)

    edit = sub.add_parser("edit", parents=[engine_flags], help="edit images: locally, or on a server with --server")
    edit.add_argument("-p", "--prompt", required=True)
    edit.add_argument("-i", "--image", action="append", required=True, metavar="REF", help="path or URL; repeatable")
    edit.add_argument("-o", "--output", required=True, help="output file (.jpg or .png)")
    edit.add_argument("--size", default="auto", help="auto, a preset (square_hd, landscape_4_3, ...) or WxH")
    edit.add_argument("--seed", type=int, default=0)
    edit.add_argument("--format", choices=("jpeg", "png"), help="default: from the output's extension, else jpeg")
    edit.add_argument("--model", default=None, help="local: a repo id, a folder or 'tiny'; --server: a model id")
    edit.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    edit.add_argument("--guidance", type=float, default=None)
    edit.add_argument("--server", help="a fluxedit server's base URL: run the edit there")
    edit.add_argument("--api-key", help="the server's API key (env FLUXEDIT_API_KEY)")
    edit.set_defaults(func=cmd_edit)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    limit_flags = _limit_flags()
    create = keys_sub.add_parser("create", parents=[limit_flags], help="create a key and print its secret once")
    create.add_argument("--name", default="default")
    update = keys_sub.add_parser("update", parents=[limit_flags], help="change a key's limits (by id or prefix)")
    update.add_argument("key")
    keys_sub.add_parser("list", help="list keys and their limits (never their secrets)")
    usage = keys_sub.add_parser("usage", help="usage per key and day: jobs by state, megapixels, engine seconds")
    usage.add_argument("key", nargs="?", help="a key id or prefix (default: every key)")
    usage.add_argument("--days", type=int, default=30, help="how many days back, today included (default 30)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key")
    keys.set_defaults(func=cmd_keys)

    tiny = sub.add_parser("tiny-model", help="build a tiny random FLUX.2 pipeline (noise, for tests and demos)")
    tiny.add_argument("--variant", choices=("klein", "klein-kv", "dev"), default="klein")
    tiny.add_argument("dir")
    tiny.set_defaults(func=cmd_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except FluxeditError as exc:
        print(f"fluxedit: error: {exc.message}", file=sys.stderr)
        return 2 if exc.code == "invalid_input" else 1
    except KeyboardInterrupt:
        print("fluxedit: interrupted", file=sys.stderr)
        return 130
