"""Faces: routers that speak a hosted provider's wire protocol over the one native queue."""
