"""Migration 0002 on SQLite and PostgreSQL: routes written before it get their served name."""

from __future__ import annotations

from sqlalchemy import text
from sqlmodel import Session

from storage import crud
from storage.db import make_engine, migrate


def test_existing_routes_get_served_as_and_new_routes_carry_the_contract(db_url: str) -> None:
    migrate(db_url, "0001")
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO routing_entry (task, adapter, version, path, sha256, "
                          "updated_at) VALUES ('greeting', 'shared', 3, '/a/shared/v3', 'x', 1)"))
    migrate(db_url)
    with Session(engine) as session:
        assert crud.routing_table(session)[1]["greeting"]["served_as"] == "shared-v3"
        contract = {"style": "tag", "prefix": "<task:thanks>", "suffix": "<sep>",
                    "add_special_tokens": False, "format": 1}
        crud.set_routes(session, reason="t", routes={
            "thanks": {"adapter": "thanks", "version": 1, "path": "/p", "sha256": "y",
                       "prompt": contract},
            "greeting": {"adapter": "shared", "version": 2, "path": "/q", "sha256": "z"}})
        session.commit()
        routes = crud.routing_table(session)[1]
    assert routes["thanks"]["served_as"] == "thanks-v1" and routes["thanks"]["prompt"] == contract
    assert routes["greeting"]["served_as"] == "shared-v2"
    engine.dispose()
