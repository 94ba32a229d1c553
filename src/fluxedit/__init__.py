"""fluxedit: self-hosted multi-reference image editing with FLUX.2."""

__version__ = "0.1.0"

from fluxedit.client import Client  # noqa: E402

__all__ = ["Client", "__version__"]
