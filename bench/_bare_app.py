"""The baseline of bench/service.py: a bare FastAPI app on raw sqlite3, under the same uvicorn.

One table of jobs; GET /v1/requests/{id}/status reads one row, POST /v1/models/{model_id}
inserts one (its JSON body as the input). No auth, no validation beyond JSON, no storage.
Both handlers are plain `def`s, so they run on uvicorn's thread pool like the service's
status handler (its submit runs its work there too). The database is WAL with
synchronous=NORMAL, as fluxedit's SQLite is.

Run:  python bench/_bare_app.py --port 8001 --db /tmp/bare.db
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import threading
import uuid
from datetime import UTC, datetime

from fastapi import FastAPI, HTTPException

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    model_id TEXT NOT NULL,
    state TEXT NOT NULL,
    input TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"""


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def insert_job(conn: sqlite3.Connection, model_id: str, input: dict) -> str:
    job_id = uuid.uuid4().hex
    conn.execute(
        "INSERT INTO jobs (id, model_id, state, input, created_at) VALUES (?, ?, 'in_queue', ?, ?)",
        (job_id, model_id, json.dumps(input), datetime.now(UTC).isoformat()),
    )
    return job_id


def create_app(path: str) -> FastAPI:
    local = threading.local()  # one connection per thread-pool thread

    def db() -> sqlite3.Connection:
        if not hasattr(local, "conn"):
            local.conn = connect(path)
        return local.conn

    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/requests/{request_id}/status")
    def status(request_id: str) -> dict:
        row = db().execute("SELECT id, state, created_at FROM jobs WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise HTTPException(404, "no such request")
        return {"request_id": row[0], "status": row[1], "created_at": row[2]}

    @app.post("/v1/models/{model_id:path}")
    def submit(model_id: str, body: dict) -> dict:
        return {"request_id": insert_job(db(), model_id, body), "status": "in_queue"}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    args = parser.parse_args()
    with connect(args.db) as conn:
        conn.execute(SCHEMA)
    # As `fluxedit serve` runs it (fluxedit.cli.cmd_serve): uvicorn's defaults otherwise.
    uvicorn.run(create_app(args.db), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
