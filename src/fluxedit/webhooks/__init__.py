"""Webhooks: rendering and signing events by format, sending them, and the delivery loop.

The events themselves live in the job database's outbox (fluxedit.jobs.outbox);
API processes deliver them (`Deliverer`, started from the app's lifespan).
"""
