"""Per key and model, how many jobs are in_queue: counters the database keeps itself.

Counting a queue is linear in its length on SQLite and PostgreSQL alike, and a submit's
queue check and every status poll need such counts. Triggers on `jobs` keep
`queue_counts` in step with every change of a job's state, in the transaction of the
change, whatever code (or operator's SQL) makes it: no store method can forget one.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from fluxedit.jobs.state import JobState

_QUEUED = JobState.in_queue.value

_RECOUNT = (
    "DELETE FROM queue_counts",
    "INSERT INTO queue_counts (model_id, key_id, queued) "
    f"SELECT model_id, key_id, count(*) FROM jobs WHERE state = '{_QUEUED}' GROUP BY model_id, key_id",
)

_ADD = (
    "INSERT INTO queue_counts (model_id, key_id, queued) VALUES (NEW.model_id, NEW.key_id, 1) "
    "ON CONFLICT (model_id, key_id) DO UPDATE SET queued = queue_counts.queued + 1"
)
_REMOVE = "UPDATE queue_counts SET queued = queued - 1 WHERE model_id = OLD.model_id AND key_id = OLD.key_id"

_SQLITE = (
    *(f"DROP TRIGGER IF EXISTS jobs_queued_{event}" for event in ("insert", "enter", "leave", "delete")),
    f"CREATE TRIGGER jobs_queued_insert AFTER INSERT ON jobs WHEN NEW.state = '{_QUEUED}' BEGIN {_ADD}; END",
    f"CREATE TRIGGER jobs_queued_enter AFTER UPDATE OF state ON jobs "
    f"WHEN OLD.state <> '{_QUEUED}' AND NEW.state = '{_QUEUED}' BEGIN {_ADD}; END",
    f"CREATE TRIGGER jobs_queued_leave AFTER UPDATE OF state ON jobs "
    f"WHEN OLD.state = '{_QUEUED}' AND NEW.state <> '{_QUEUED}' BEGIN {_REMOVE}; END",
    f"CREATE TRIGGER jobs_queued_delete AFTER DELETE ON jobs WHEN OLD.state = '{_QUEUED}' BEGIN {_REMOVE}; END",
)

_POSTGRESQL = (
    f"""CREATE OR REPLACE FUNCTION fluxedit_count_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        IF OLD.state = '{_QUEUED}' AND (TG_OP = 'DELETE' OR NEW.state <> '{_QUEUED}') THEN
            {_REMOVE};
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        IF NEW.state = '{_QUEUED}' AND (TG_OP = 'INSERT' OR OLD.state <> '{_QUEUED}') THEN
            {_ADD};
        END IF;
    END IF;
    RETURN NULL;
END $$""",
    "DROP TRIGGER IF EXISTS jobs_count_queued ON jobs",
    "CREATE TRIGGER jobs_count_queued AFTER INSERT OR DELETE OR UPDATE OF state ON jobs "
    "FOR EACH ROW EXECUTE FUNCTION fluxedit_count_queued()",
)


def install_queue_counts(conn: Connection) -> None:
    """(Re)create the triggers, then count every queue once, in the caller's transaction.

    The triggers come first: on PostgreSQL, CREATE TRIGGER locks `jobs` against writes
    until commit, so no job changes state between the count and the first trigger.
    """
    for statement in (*(_SQLITE if conn.dialect.name == "sqlite" else _POSTGRESQL), *_RECOUNT):
        conn.exec_driver_sql(statement)
