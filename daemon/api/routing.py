"""GET /v1/routing: which adapter version the app must serve per task, with an ETag so a
poller gets a 304 until the table changes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlmodel import Session

from daemon.api.deps import DATABASE_DOWN, AppDeps
from daemon.api.models import Route, RoutingTable
from storage import crud

router = APIRouter()
SERVING_FIELDS = ("served_as", "prompt")
ETAG_HEADER = {"ETag": {"description": 'the revision, `"routing-<revision>"`',
                        "schema": {"type": "string"}}}


def _route(entry: dict[str, Any]) -> Route:
    """A routing_table entry as the answer's route. The serving fields are set only when the
    table carries them, and the answer leaves unset fields out, so the body stays the one
    published on the routing channel."""
    serving = {key: entry[key] for key in SERVING_FIELDS if key in entry}
    return Route(adapter=entry["adapter"], version=entry["version"], path=entry["path"],
                 sha256=entry["sha256"], **serving)


@router.get(
    "/v1/routing", response_model=RoutingTable, response_model_exclude_unset=True,
    summary="Task -> adapter version to serve",
    responses={200: {"headers": ETAG_HEADER},
               304: {"description": "unchanged since the If-None-Match ETag",
                     "headers": ETAG_HEADER},
               **DATABASE_DOWN})
def get_routing(request: Request, response: Response, deps: AppDeps) -> RoutingTable | Response:
    with Session(deps.engine) as session:
        revision, routes = crud.routing_table(session)
    etag = f'"routing-{revision}"'
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return RoutingTable(revision=revision,
                        routes={task: _route(entry) for task, entry in routes.items()})
