"""Errors that carry a stable machine-readable code and a sentence for people.

Every layer raises these; the API turns them into its one JSON envelope, the CLI
prints the sentence, and the worker stores code and sentence on the failed job.
"""

from __future__ import annotations


class FluxeditError(Exception):
    """Base error: `code` is stable for machines, `message` is for people."""

    code: str = "internal_error"
    status: int = 500

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        index: int | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.field = field  # dotted path of the input field at fault, if any
        self.index = index  # position in image_urls, for input errors

    def to_dict(self) -> dict:
        body: dict = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.index is not None:
            body["index"] = self.index
        return body


class InvalidInput(FluxeditError):
    """A value the caller sent is not acceptable (size, prompt, ...)."""

    code = "invalid_input"
    status = 422


class ImageInputError(FluxeditError):
    """A reference image could not be used.

    Codes: input_unreachable, input_too_large, input_not_image, input_forbidden,
    input_invalid (decodes, but too small, too skewed, ...).
    """

    code = "input_invalid"
    status = 422


class ModelUnavailable(FluxeditError):
    """Weights cannot be found or loaded."""

    code = "model_unavailable"
    status = 503


class EditCancelled(FluxeditError):
    """The progress callback asked the engine to stop."""

    code = "cancelled"
    status = 409


class NotFound(FluxeditError):
    """No such request, model or file for this caller (another key's jobs are not found either)."""

    code = "not_found"
    status = 404
