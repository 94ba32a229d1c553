"""fluxedit: self-hosted multi-reference image editing with FLUX.2."""

__version__ = "0.1.0"
