"""Which served model runs each fal app id (`fal-ai/flux-2-pro/edit`, ...)."""

from __future__ import annotations

from fluxedit.config import Settings

NATIVE = "blackforestlabs/flux-2/{}/edit"

# fal's FLUX.2 edit apps and the standard model ids they correspond to.
DEFAULT_FAL_APPS: dict[str, str] = {
    "fal-ai/flux-2-pro/edit": NATIVE.format("pro"),
    "fal-ai/flux-2-flex/edit": NATIVE.format("flex"),
    "fal-ai/flux-2-max/edit": NATIVE.format("max"),
    "fal-ai/flux-2/edit": NATIVE.format("dev"),
    "fal-ai/flux-2/klein/4b/edit": NATIVE.format("klein-4b"),
    "fal-ai/flux-2/klein/9b/edit": NATIVE.format("klein-9b"),
}


def fal_apps(settings: Settings) -> dict[str, str]:
    """fal app id -> model id: the defaults with `settings.fal_apps` on top (an empty model id removes an app)."""
    table = {**DEFAULT_FAL_APPS, **settings.fal_apps}
    return {app: model for app, model in table.items() if model}


def apps_of(settings: Settings, model_id: str) -> list[str]:
    """The fal app ids that run `model_id`."""
    return sorted(app for app, model in fal_apps(settings).items() if model == model_id)
