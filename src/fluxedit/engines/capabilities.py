"""What the engine behind a source can honour, known without building it (no torch).

The API checks every request against these before queuing it, so that an input
that would change the output is either honoured or refused (422 naming it),
never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from fluxedit.schema import EditInput

BFL_PREFIX = "bfl:"
FLUX2_MAX_REFERENCES = 10  # what the FLUX.2 pipelines take; Flux2Engine.max_references
BFL_MAX_REFERENCES = 8  # BFL's API for [pro], [flex], [max]
BFL_TUNABLE = ("flux-2-flex",)  # the BFL models that take steps and guidance


@dataclass(frozen=True)
class Capabilities:
    kind: str
    max_references: int
    steps: bool  # num_inference_steps
    guidance: bool  # guidance_scale
    safety_tolerance: bool
    moderated: bool  # outputs are always moderated (True) or never checked (False)

    def refused(self, params: EditInput) -> list[str]:
        """The fields of `params` set to something this engine cannot do."""
        asked = {
            "num_inference_steps": params.num_inference_steps is not None and not self.steps,
            "guidance_scale": params.guidance_scale is not None and not self.guidance,
            "safety_tolerance": params.safety_tolerance is not None and not self.safety_tolerance,
            "enable_safety_checker": params.enable_safety_checker not in (None, self.moderated),
        }
        return [name for name, refused in asked.items() if refused]

    def explain(self, field: str) -> str:
        """Why `field` is refused, for the 422's message."""
        if field == "enable_safety_checker":
            return (
                "its outputs are always moderated by Black Forest Labs"
                if self.moderated
                else "this server runs no safety checker on local models"
            )
        if self.kind == "bfl":
            return "Black Forest Labs' API takes it only for FLUX.2 [flex]"
        return "it applies to models hosted by Black Forest Labs only"


def capabilities_of(source: str) -> Capabilities:
    """The capabilities of the engine `engines.registry.make_engine(source)` builds."""
    if source.startswith(BFL_PREFIX):
        tunable = source.removeprefix(BFL_PREFIX) in BFL_TUNABLE
        return Capabilities("bfl", BFL_MAX_REFERENCES, tunable, tunable, safety_tolerance=True, moderated=True)
    return Capabilities("diffusers", FLUX2_MAX_REFERENCES, True, True, safety_tolerance=False, moderated=False)
