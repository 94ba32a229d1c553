"""The wire models: one source for validation, OpenAPI, the client and the playground."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from fluxedit import image_url, sizes
from fluxedit.errors import InvalidInput
from fluxedit.jobs.state import JobState  # the wire models report it; it is defined with the jobs

MAX_REFERENCES = 10
MAX_IMAGES = 4  # outputs per request (num_images)
MAX_PROMPT_CHARS = 10_000
# The integers a JSON number holds exactly everywhere (RFC 8259: IEEE doubles); larger ones
# come out rounded from JavaScript, and from validators that read numbers as doubles.
MAX_SEED = 2**53 - 1
# A listing's next_cursor: "s" and the sequence number of the last job on the page (< 10**18,
# an SQL BIGINT); an empty one asks for the first page, as none does.
CURSOR_PATTERN = "^(?:s(?:0|[1-9][0-9]{0,17}))?$"
# The longest side the area bound allows: the other side at its minimum (4 MP / 64 = 65536).
MAX_CUSTOM_SIDE = sizes.MAX_PIXELS // sizes.MIN_SIDE
JPEG_MAX_SIDE = 65_535  # JPEG stores each side in 16 bits


def _whole_float_to_int(value: object) -> object:
    return int(value) if type(value) is float and value.is_integer() else value


# An integer as JSON Schema has it: 35 or 35.0, not 35.5, "35" or true (the models are strict).
# (Bounds go before WHOLE in an Annotated, or they do not reach the OpenAPI document.)
WHOLE = BeforeValidator(_whole_float_to_int)
WholeNumber = Annotated[int, WHOLE]

ImageSizeName = Literal[
    "auto", "square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"
]
OutputFormat = Literal["jpeg", "png"]


class CustomImageSize(BaseModel):
    """A custom output size: each side >= 64 (rounded down to a multiple of 16), at most 4 MP."""

    model_config = ConfigDict(extra="forbid", strict=True)

    width: WholeNumber = Field(..., ge=sizes.MIN_SIDE, le=MAX_CUSTOM_SIDE, examples=[1024])
    height: WholeNumber = Field(..., ge=sizes.MIN_SIDE, le=MAX_CUSTOM_SIDE, examples=[768])

    @model_validator(mode="after")
    def _bounded(self) -> CustomImageSize:
        try:
            sizes.custom_size(self.width, self.height)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        return self


def _size_kind(value: object) -> str:
    return "custom" if isinstance(value, (dict, CustomImageSize)) else "name"


# Tagged so that a bad value gets the one error of its own form, not one per branch.
ImageSize = Annotated[
    Annotated[ImageSizeName, Tag("name")] | Annotated[CustomImageSize, Tag("custom")],
    Discriminator(_size_kind),
]


# The OpenAPI document states each rule the validators apply (the validators give the sentences).
ImageURL = Annotated[
    str,
    WithJsonSchema({"type": "string", "maxLength": image_url.MAX_DATA_URI_CHARS, "pattern": image_url.PATTERN}),
]
# Whitespace as str.strip() and ECMA-262's \s both see it, spelled out so that both read it alike.
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
NOT_BLANK = f"[^{_SPACE}]"


class EditInput(BaseModel):
    """Input of every `.../edit` model: a prompt and 1 to 10 reference images."""

    # Unknown fields are ignored so that clients of the hosted APIs (which send
    # e.g. sync_mode) work unchanged. Strict: a number is a JSON number, not "5" or true,
    # as the OpenAPI document says.
    model_config = ConfigDict(extra="ignore", strict=True)

    prompt: str = Field(
        ...,
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="What to do with the references; not blank.",
        json_schema_extra={"pattern": NOT_BLANK},
    )
    image_urls: list[ImageURL] = Field(
        ...,
        min_length=1,
        max_length=MAX_REFERENCES,
        description="1 to 10 references: https/http URLs, data: URIs or URLs from POST /v1/files. "
        'The first sets the "auto" size.',
    )
    image_size: ImageSize = Field(
        "auto",
        description='A preset, "auto" (the first reference\'s aspect ratio at about 1 MP) or {width, height}.',
        # The size rules, machine-readable in /openapi.json: the playground reads them from here.
        json_schema_extra={
            "x-presets": {name: {"width": w, "height": h} for name, (w, h) in sizes.PRESETS.items()},
            "x-size-rules": {
                "multiple": sizes.MULTIPLE,
                "min_side": sizes.MIN_SIDE,
                "max_side": MAX_CUSTOM_SIDE,
                "max_side_jpeg": JPEG_MAX_SIDE,
                "max_pixels": sizes.MAX_PIXELS,
                "auto_pixels": sizes.AUTO_PIXELS,
            },
        },
    )
    seed: WholeNumber = Field(0, ge=0, le=MAX_SEED, description="Same seed, same inputs: same image.")
    output_format: OutputFormat = "jpeg"
    num_images: WholeNumber = Field(1, ge=1, le=MAX_IMAGES, description="How many images to make from these inputs.")
    # fluxedit extensions, not in the hosted schema:
    num_inference_steps: Annotated[int, Field(ge=1, le=100), WHOLE] | None = Field(
        None, description="Denoising steps; default: the model's."
    )
    guidance_scale: float | None = Field(None, ge=0.0, le=20.0, description="Guidance; default: the model's.")
    # Hosted BFL models only: a local model given these answers 422 (it cannot honour them).
    safety_tolerance: Annotated[int, Field(ge=0, le=6), WHOLE] | None = None
    enable_safety_checker: bool | None = Field(
        None, description="Hosted BFL models always moderate; local models have no checker."
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if re.search(NOT_BLANK, value) is None:
            raise ValueError("prompt must not be blank")
        return value

    @field_validator("image_size", mode="before")
    @classmethod
    def _known_size_name(cls, value: object) -> object:
        if isinstance(value, str) and value not in sizes.SIZE_NAMES:
            raise ValueError(
                f"{value!r} is not a known size; use one of {', '.join(sizes.SIZE_NAMES)} "
                'or {"width": W, "height": H}'
            )
        return value

    @field_validator("image_urls")
    @classmethod
    def _urls_have_allowed_form(cls, urls: list[str]) -> list[str]:
        for index, url in enumerate(urls):
            problem = image_url.problem(url)
            if problem:
                raise ValueError(f"image_urls[{index}]: {problem}")
        return urls

    @model_validator(mode="after")
    def _fits_the_output_format(self) -> EditInput:
        size = self.image_size
        if self.output_format != "jpeg" or not isinstance(size, CustomImageSize):
            return self
        width, height = sizes.custom_size(size.width, size.height)
        if max(width, height) <= JPEG_MAX_SIDE:
            return self
        # Raised as a ValidationError so that the answer names image_size, not the whole input.
        problem = PydanticCustomError(
            "jpeg_side",
            "{width}x{height} is too large for JPEG output, which holds at most {limit} pixels a side; "
            'ask for "output_format": "png" or a smaller size',
            {"width": width, "height": height, "limit": JPEG_MAX_SIDE},
        )
        raise ValidationError.from_exception_data(
            "EditInput", [InitErrorDetails(type=problem, loc=("image_size",), input=size.model_dump())]
        )

    def output_size(self, first_reference: tuple[int, int]) -> tuple[int, int]:
        size = self.image_size
        if isinstance(size, CustomImageSize):
            return sizes.custom_size(size.width, size.height)
        return sizes.resolve_size(size, first_reference)


WebhookEvent = Literal["start", "progress", "completed"]


class WebhookRequest(BaseModel):
    """Where to send a request's webhooks: part of the submit body (or `?webhook=`), not a model input."""

    model_config = ConfigDict(extra="ignore")

    webhook: str | None = Field(
        None,
        max_length=image_url.MAX_URL_CHARS,
        description="An http(s) URL that receives a signed POST (Standard Webhooks) for the events asked for.",
    )
    webhook_events_filter: list[WebhookEvent] | None = Field(
        None,
        min_length=1,
        description='Which events to send: "start", "progress", "completed" (any end: completed, failed or '
        'cancelled). Default ["completed"].',
    )


def invalid_input(errors: list[dict]) -> InvalidInput:
    """pydantic's errors for an input -> one InvalidInput: the first problem, its field and reference index."""
    first = errors[0] if errors else {}
    field = _field_path(tuple(first.get("loc", ())))
    index = None
    if field.startswith("image_urls[") and field.endswith("]"):
        index = int(field[len("image_urls[") : -1])
    message = _validation_message(first, field)
    if len(errors) > 1:
        message += f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} in the input.)"
    return InvalidInput(message, field=field or None, index=index)


def _field_path(loc: tuple) -> str:
    """('body', 'image_urls', 0) -> 'image_urls[0]'; union tags such as 'custom' are dropped."""
    path = ""
    for part in loc:
        if part in ("body", "query", "path", "header", "custom", "name") or (
            isinstance(part, str) and part.startswith(("literal[", "function-"))
        ):
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _validation_message(error: dict, field: str) -> str:
    message = error.get("msg", "is not valid").removeprefix("Value error, ")
    if error.get("type") == "missing":
        return f"{field} is required."
    if error.get("type") == "json_invalid":
        return "The request body is not valid JSON."
    return f"{field}: {message}" if field and not message.startswith(field) else message


class SubmitResponse(BaseModel):
    request_id: str
    status: JobState = JobState.in_queue
    status_url: str
    result_url: str
    cancel_url: str


class Progress(BaseModel):
    step: int = Field(..., description="Denoising steps done.")
    total: int = Field(..., description="Denoising steps in all.")


class JobError(BaseModel):
    code: str
    message: str
    index: int | None = Field(None, description="Which image_urls entry, for input errors.")


class Timings(BaseModel):
    queue_s: float | None = None
    inference_s: float | None = None
    total_s: float | None = None


Phase = Literal["fetching", "loading", "denoising", "encoding"]


class StatusResponse(BaseModel):
    request_id: str
    model_id: str
    status: JobState
    queue_position: int | None = Field(None, description="Jobs ahead of this one, while in_queue.")
    progress: Progress | None = None
    phase: Phase | None = Field(
        None,
        description="While in_progress: fetching (the references), loading (the model), denoising, encoding "
        "(and storing the outputs).",
    )
    cancel_requested: bool = Field(
        False, description="A cancel was asked for while the job ran: it stops at its next denoising step."
    )
    error: JobError | None = None
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    status_url: str
    result_url: str
    cancel_url: str
    webhook: str | None = Field(None, description="Where this request's webhooks go, if it has one.")
    webhook_events_filter: list[WebhookEvent] | None = Field(None, description="The events sent to the webhook.")


class CancelResponse(StatusResponse):
    """The status after a cancel, with what the cancel did (RunComfy's `outcome`)."""

    outcome: Literal["cancellation_requested", "not_cancellable"] = Field(
        ...,
        description="cancellation_requested: a queued job is cancelled, a running one stops at its next step; "
        "not_cancellable: it had already finished.",
    )


class EditOutput(BaseModel):
    images: list[str] = Field(..., description="URLs of the edited images.")


class ResultResponse(StatusResponse):
    """Status plus, once completed, the outputs."""

    output: EditOutput | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    timings: Timings | None = None
    cost: float | None = Field(
        None, description="USD, with include_cost=true once completed, when the operator set a price for the model."
    )
    input: dict | None = Field(None, description="The input as submitted.")


class RequestList(BaseModel):
    requests: list[ResultResponse]
    next_cursor: str | None = None


class WebhookSecret(BaseModel):
    secret: str = Field(..., description="This API key's webhook signing secret (whsec_..., Standard Webhooks).")


class WebhookAttempt(BaseModel):
    number: int = Field(..., description="1 for the first try.")
    started_at: datetime
    finished_at: datetime | None = Field(None, description="None while it is being sent.")
    status_code: int | None = Field(None, description="The receiver's HTTP status, when it answered.")
    error: str | None = Field(None, description="What went wrong, when it did not answer with a 2xx.")
    next_attempt_at: datetime | None = Field(None, description="When the next try was scheduled after this one.")


class WebhookEventLog(BaseModel):
    id: str = Field(..., description="The webhook-id header: the same on every try of this event.")
    type: str = Field(..., description="request.started, request.progress, request.completed, ...")
    created_at: datetime
    state: Literal["pending", "delivered", "failed", "gone", "refused", "dropped"] = Field(
        ...,
        description="pending (to be tried), delivered (2xx), failed (every try failed), gone (410), "
        "refused (the destination is not allowed), dropped (a progress event overtaken by a newer event).",
    )
    next_attempt_at: datetime | None = None
    attempts: list[WebhookAttempt]


class WebhookLog(BaseModel):
    request_id: str
    webhook: str | None = None
    events: list[WebhookEventLog]


class ModelInfo(BaseModel):
    id: str
    engine: Literal["diffusers", "bfl", "tiny"] | str
    source: str = Field(..., description="Where the weights or the service come from.")
    loaded: bool
    max_references: int
    queued: int = 0
    fal_apps: list[str] = Field(default_factory=list, description="fal app ids that run this model under /fal.")


class ModelList(BaseModel):
    models: list[ModelInfo]


class FileUploadResponse(BaseModel):
    url: str
    content_type: str
    size: int
    expires_at: datetime


class StorageHealth(BaseModel):
    writable: bool
    error: str | None = Field(None, description="Why not, when it is not.")


class Health(BaseModel):
    ok: bool = Field(..., description="False (and HTTP 503) when the server cannot store results.")
    auth: Literal["key", "none"] = Field(..., description="Whether /v1 needs an API key.")
    storage: StorageHealth
    models: dict[str, bool] = Field(..., description="Model id -> whether its weights are loaded.")


class ErrorDetail(BaseModel):
    code: Annotated[str, Field(description="Stable, machine-readable.")]
    message: Annotated[str, Field(description="A sentence for people.")]
    field: str | None = None
    index: int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
    # The same code and sentence, flat, where RunComfy's clients read them.
    error_code: str
    error_message: str
