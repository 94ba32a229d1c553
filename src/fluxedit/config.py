"""Settings: the one place for knobs. Every field reads env `FLUXEDIT_<NAME>`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Ten tries over about eight hours, like the hosted providers' (fal: 10 over 2 h).
DEFAULT_WEBHOOK_RETRY_S = (5.0, 30.0, 120.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)


def default_data_dir() -> Path:
    return Path.home() / ".fluxedit"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLUXEDIT_", extra="ignore")

    # --- where things live -------------------------------------------------
    data_dir: Path = Field(default_factory=default_data_dir, description="Jobs DB, outputs, uploads, tiny model cache.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/fluxedit.db.")
    broker_url: str | None = Field(None, description="None: in-process workers. redis://...: Celery.")
    storage_url: str | None = Field(None, description="None: <data_dir>/files. s3://bucket/prefix: S3.")
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_presign: bool = Field(True, description="Presigned bucket URLs; False: serve outputs through the API.")
    s3_addressing_style: str = Field(
        "auto", pattern="^(auto|path|virtual)$", description="path for MinIO and most self-hosted stores."
    )

    # --- the API -------------------------------------------------------------
    public_url: str | None = Field(None, description="Base URL in answers; default: the request's base URL.")
    secret_key: str | None = Field(
        None, description="HMAC secret for signed file URLs; default: generated into data_dir."
    )
    url_expiry_s: int = Field(24 * 3600, ge=60)
    sweep_interval_s: float = Field(600.0, gt=0)
    max_queued_per_model: int = Field(100, ge=1)
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    max_request_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, description="Any request body (bounds inline data: URIs, and uploads too)."
    )
    allow_unauthenticated: bool = Field(False, description="Only honoured on a loopback bind.")
    stream_poll_interval_s: float = Field(
        0.1, gt=0, le=5, description="How often a status stream or a `Prefer: wait` reads its job's row."
    )
    key_cache_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description=(
            "How long an API process trusts a key it verified and the limits it read for a key: a revoked key "
            "works, and a key's old limits hold, at most this long (0: never cached)."
        ),
    )
    max_streams_per_key: int = Field(8, ge=1, description="Open status streams per API key and API process.")
    replicate_models: dict[str, str] = Field(
        default_factory=dict,
        description='Replicate model names -> served ids, over the defaults, e.g. {"acme/edit": "my/model/edit"}.',
    )
    max_unknown_ids_per_minute: int = Field(
        30, ge=1, description="Lookups of request ids a key does not have, per key and minute; more answer 429."
    )
    price_per_megapixel: dict[str, float] = Field(
        default_factory=dict,
        description="Model id -> USD per output megapixel, for include_cost=true; none by default.",
    )
    fal_apps: dict[str, str] = Field(
        default_factory=dict,
        description="fal app id -> model id under /fal, on top of the default table (api/faces/fal_apps.py); "
        'an empty model id removes an app, e.g. {"fal-ai/flux-2/edit": ""}.',
    )

    metrics_token: str | None = Field(
        None, repr=False, description="Bearer token for GET /metrics; None: /metrics answers loopback clients only."
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="`fluxedit worker`: serve its Prometheus metrics on this port."
    )
    metrics_bind: str = Field("127.0.0.1", description="`fluxedit worker`: the address of its metrics port.")

    key_max_queued: int | None = Field(
        None, ge=1, description="Default for keys without their own: queued jobs per key (all models); more is a 429."
    )
    key_max_running: int | None = Field(
        None, ge=1, description="Default for keys without their own: jobs of one key running at once."
    )
    key_requests_per_minute: int | None = Field(
        None, ge=1, description="Default for keys without their own: submits per key and minute, per API process."
    )

    # --- inputs ----------------------------------------------------------------
    max_image_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(64_000_000, ge=1)
    fetch_connect_timeout_s: float = Field(5.0, gt=0)
    fetch_total_timeout_s: float = Field(30.0, gt=0)
    fetch_max_redirects: int = Field(5, ge=0)
    fetch_allow: list[str] = Field(
        default_factory=list,
        description="Hosts or networks (CIDR) inside the network that image URLs may reach.",
    )

    # --- jobs ------------------------------------------------------------------
    max_attempts: int = Field(3, ge=1)
    lease_s: float = Field(60.0, gt=0, description="A running job's lease; renewed by its worker's heartbeat.")
    poll_interval_s: float = Field(2.0, gt=0, description="Local workers look for queued jobs at least this often.")
    recover_interval_s: float = Field(5.0, gt=0, description="How often jobs with expired leases are re-queued.")

    # --- webhooks (delivered by the API processes) ----------------------------------
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="A delivery without a 2xx answer within this long is retried."
    )
    webhook_retry_s: list[float] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_RETRY_S),
        description="Delays before each retry of a failed delivery; one try more than there are delays.",
    )
    webhook_progress_interval_s: float = Field(
        1.0, ge=0, description="At most one progress event per request this often."
    )
    webhook_poll_interval_s: float = Field(
        0.25, gt=0, description="How often an API process looks for events other processes wrote."
    )
    webhook_concurrency: int = Field(16, ge=1, description="Deliveries in flight at once per API process.")

    # --- the cluster mode (broker_url set) ----------------------------------------
    broker_visibility_timeout_s: int = Field(
        3600, ge=60, description="Redis: an unacknowledged message is delivered again after this long."
    )

    # --- engines -----------------------------------------------------------------
    device: str | None = Field(None, description="cuda, cpu, ...; default: cuda if available.")
    cpu_offload: bool = False
    default_steps: int | None = Field(None, ge=1, le=100, description="None: the model's own default.")
    guidance_scale: float | None = None

    # --- engine speed (engines/speed.py SpeedOptions; lossless unless noted) ------
    bf16: bool = Field(True, description="bfloat16 on CUDA (the models' own dtype); float32 on CPU either way.")
    fuse_qkv: bool = Field(True, description="Fuse the Q/K/V projections of the double blocks.")
    compile: str = Field(
        "auto",
        pattern="^(auto|off|regional)$",
        description="torch.compile of the repeated transformer blocks at load; auto: on CUDA only.",
    )
    attention_backend: str = Field(
        "native", description="diffusers attention backend: native (PyTorch SDPA), _native_cudnn, flash, ..."
    )
    vae_channels_last: bool | None = Field(
        None, description="VAE convolutions in channels-last layout; default: on CUDA."
    )
    vae_tiling: bool = Field(True, description="Tiled VAE for outputs of 4 megapixels or more (bounds memory).")
    fp8: bool = Field(False, description="Lossy: torchao float8 dynamic quantization of the transformer (CUDA, sm89+).")
    warm_up: bool | None = Field(
        None, description="One small edit at load so the first request is not slow; default: on CUDA."
    )

    # --- Black Forest Labs' hosted API --------------------------------------------
    bfl_api_key: str | None = Field(None, repr=False)
    bfl_region: str = Field("global", pattern="^(global|eu|us)$")
    bfl_max_concurrent: int = Field(24, ge=1, description="Tasks in flight at BFL per process (BFL allows 24 per key).")
    bfl_base_url: str | None = Field(None, description="Overrides the region's URL: a proxy, or a local test server.")
    bfl_timeout_s: float = Field(600.0, gt=0, description="Longest wait for a forwarded task to finish at BFL.")
    bfl_busy_retry_s: float = Field(120.0, ge=0, description="How long a submit is retried while BFL answers 429.")
    bfl_network_retries: int = Field(3, ge=0, description="Retries of one call to BFL after a network error.")
    bfl_backoff_s: float = Field(0.5, gt=0, description="First wait between polls and retries; grows up to 5 s.")

    @field_validator("webhook_retry_s")
    @classmethod
    def _delays_not_negative(cls, delays: list[float]) -> list[float]:
        if any(delay < 0 for delay in delays):
            raise ValueError("webhook_retry_s: every delay must be 0 or more seconds")
        return delays

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'fluxedit.db'}"

    @property
    def tiny_model_dir(self) -> Path:
        return self.data_dir / "models" / "tiny-klein"
