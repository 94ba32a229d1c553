"""fal's input schema for its FLUX.2 edit apps, translated into the native edit input."""

from __future__ import annotations

import secrets

from pydantic import Field, field_validator

from fluxedit.schema import EditInput

RANDOM_SEEDS = 2**32  # fal picks a random seed when none is given, and reports it


class FalEditInput(EditInput):
    """fal's FLUX.2 edit input (`fal-ai/flux-2-pro/edit`, `fal-ai/flux-2/edit`, ...).

    The fields fal and fluxedit share keep fluxedit's rules; `safety_tolerance` may be
    fal's string ("2"). Purely client-side fields (`sync_mode`, `acceleration`) are
    accepted and ignored.
    """

    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Omitted: a random seed, reported in the output.")
    sync_mode: bool | None = Field(None, description="fal: answer with data URIs. Ignored: answers carry URLs.")
    enable_prompt_expansion: bool | None = Field(None, description="Not available: only false is accepted.")

    @field_validator("enable_prompt_expansion")
    @classmethod
    def _no_prompt_expansion(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("prompt expansion is not available on this server; send false or leave it out")
        return value

    def edit_input(self) -> EditInput:
        """The native input for this request, with a random seed when fal's client gave none."""
        values = self.model_dump(exclude={"sync_mode", "enable_prompt_expansion"}, exclude_none=True)
        values.setdefault("seed", secrets.randbelow(RANDOM_SEEDS))
        return EditInput.model_validate(values)
