"""Faces: routers that speak a hosted provider's wire protocol over fluxedit's one queue.

A face translates its provider's input into the edit input and a job into its
provider's answers; submit, status and cancel are the native ones (api/routes.py,
the job store), so a job from any face is the same job row, in the same history.
"""
