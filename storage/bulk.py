"""The drain's bulk writes on PostgreSQL: COPY.

For a batch of feedback events the ids already stored are looked up with one indexed
``id = ANY(...)``; the other rows are copied straight into ``feedback_event`` inside a
savepoint, and their training examples straight into ``training_example``. COPY streams rows
with no statement to parse, where a multi-row INSERT of a 1,000-event batch binds ~14,000
parameters; copying into the table itself spares the server ON CONFLICT's speculative insertion
and a staging table's extra write and read.

An id that a concurrent transaction inserts after the look-up makes the copy wait for it; if
that transaction commits, the copy fails with a unique violation, the savepoint is rolled back
and the batch goes through a temporary staging table and ``INSERT ... SELECT ... ON CONFLICT
(id) DO NOTHING RETURNING id``, which skips the id. Either way the caller learns exactly which
rows are new.

Everything runs on the session's connection, inside the caller's transaction. Errors are raised
as SQLAlchemy's (``sqlalchemy.exc.DataError`` for a value PostgreSQL cannot store), the same
as the statements the ORM runs.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import pydantic_core
from psycopg import sql
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session

FEEDBACK_COLUMNS = ("id", "task", "adapter", "prompt", "messages", "output", "verdict", "rating",
                    "correction", "crosstalk_source", "occurred_at", "received_at", "meta",
                    "observed")
EXAMPLE_COLUMNS = ("task", "kind", "prompt", "messages", "response", "negative",
                   "crosstalk_source", "event_id", "created_at")
JSON_COLUMNS = frozenset({"messages", "meta"})

# Lives as long as the connection and is emptied by every commit; ``IF NOT EXISTS`` because a
# rolled-back transaction takes the table it created with it.
_STAGE = sql.SQL(
    "CREATE TEMPORARY TABLE IF NOT EXISTS adaptd_feedback_stage ON COMMIT DELETE ROWS AS "
    "SELECT {cols} FROM feedback_event WITH NO DATA"
).format(cols=sql.SQL(", ").join(map(sql.Identifier, FEEDBACK_COLUMNS)))
_COPY_STAGE = sql.SQL("COPY adaptd_feedback_stage ({cols}) FROM STDIN").format(
    cols=sql.SQL(", ").join(map(sql.Identifier, FEEDBACK_COLUMNS)))
_MOVE = sql.SQL(
    "INSERT INTO feedback_event ({cols}) SELECT {cols} FROM adaptd_feedback_stage "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
).format(cols=sql.SQL(", ").join(map(sql.Identifier, FEEDBACK_COLUMNS)))
_STORED = sql.SQL("SELECT id FROM feedback_event WHERE id = ANY(%s)")
_COPY = sql.SQL("COPY feedback_event ({cols}) FROM STDIN").format(
    cols=sql.SQL(", ").join(map(sql.Identifier, FEEDBACK_COLUMNS)))
_COPY_EXAMPLES = sql.SQL("COPY training_example ({cols}) FROM STDIN").format(
    cols=sql.SQL(", ").join(map(sql.Identifier, EXAMPLE_COLUMNS)))


def _driver(session: Session) -> psycopg.Connection[Any]:
    conn: Any = session.connection().connection.driver_connection
    if not isinstance(conn, psycopg.Connection):
        raise TypeError(f"COPY needs a psycopg 3 connection, not {type(conn).__name__}")
    return conn


@contextmanager
def _as_sqlalchemy_errors(statement: sql.Composable) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise DBAPIError.instance(str(statement), None, exc, psycopg.Error) from exc


def _tuples(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Iterator[Sequence[Any]]:
    """Rows in ``columns`` order (each row has every column); JSON columns as JSON text, None
    as SQL NULL."""
    pick = operator.itemgetter(*columns)
    json_at = [i for i, c in enumerate(columns) if c in JSON_COLUMNS]
    for row in rows:
        values = list(pick(row))
        for i in json_at:
            if values[i] is not None:
                values[i] = pydantic_core.to_json(values[i]).decode()
        yield values


def copy_feedback(session: Session, *, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Insert feedback rows (each with every one of ``FEEDBACK_COLUMNS``), skipping ids already
    stored or repeated in ``rows``; return the ids really inserted."""
    first: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        first.setdefault(row["id"], row)
    if not first:
        return set()
    conn = _driver(session)
    with conn.cursor() as cur:
        with _as_sqlalchemy_errors(_STORED):
            cur.execute(_STORED, [list(first)])
            stored = {r[0] for r in cur.fetchall()}
        new = [row for i, row in first.items() if i not in stored]
        if not new:
            return set()
        try:
            with conn.transaction(), _as_sqlalchemy_errors(_COPY), cur.copy(_COPY) as copy:
                for values in _tuples(new, FEEDBACK_COLUMNS):
                    copy.write_row(values)
            return {row["id"] for row in new}
        except IntegrityError as exc:
            if not isinstance(exc.orig, psycopg.errors.UniqueViolation):
                raise
        # A concurrent transaction committed one of these ids after the look-up.
        with _as_sqlalchemy_errors(_STAGE):
            cur.execute(_STAGE)
        with _as_sqlalchemy_errors(_COPY_STAGE), cur.copy(_COPY_STAGE) as copy:
            for values in _tuples(new, FEEDBACK_COLUMNS):
                copy.write_row(values)
        with _as_sqlalchemy_errors(_MOVE):
            cur.execute(_MOVE)
            return {row[0] for row in cur.fetchall()}


def copy_examples(session: Session, *, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert training examples (each with every one of ``EXAMPLE_COLUMNS``) of feedback rows
    this transaction has just inserted. Without ON CONFLICT: no (event_id, kind) pair of a row
    that was not stored before can exist, and the unique constraint still refuses one that
    would."""
    if not rows:
        return 0
    with _driver(session).cursor() as cur, _as_sqlalchemy_errors(_COPY_EXAMPLES), \
            cur.copy(_COPY_EXAMPLES) as copy:
        for values in _tuples(rows, EXAMPLE_COLUMNS):
            copy.write_row(values)
    return len(rows)
