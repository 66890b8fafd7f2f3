"""/openapi.json describes every answer, and every real answer (real HTTP, Redis, SQLite)
matches what it declares: its JSON validates against the declared schema, and its response
model carries exactly its keys."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema_rs
import pytest
from pydantic import BaseModel
from sqlalchemy.engine import Engine

from daemon.api import create_app, models
from daemon.api.routing import _route
from daemon.settings import Settings
from storage import crud
from storage.db import make_engine, session_scope
from storage.models import AdapterVersion
from tests.conftest import LiveServer
from tests.helpers import event, post

ADMIN = {"Authorization": "Bearer admin-token-for-tests"}
# The refusals each operation must document (the HTTP API contract).
REQUIRED_STATUSES = {
    ("post", "/v1/feedback"): {"202", "400", "401", "413", "422", "503"},
    ("get", "/v1/routing"): {"200", "304"},
    ("post", "/v1/tasks/{task}/{action}"): {"202", "401", "403", "404"},
}


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        *_, name = schema["$ref"].split("/")
        schema = doc["components"]["schemas"][name]
    return schema


def openapi(url: str) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{url}/openapi.json").raise_for_status().json()
    return doc


def test_openapi_has_a_response_schema_for_every_operation(live_api: LiveServer) -> None:
    doc = openapi(live_api.url)
    operations = [(method, path, op) for path, ops in doc["paths"].items()
                  for method, op in ops.items()]
    assert len(operations) >= 11
    for method, path, op in operations:
        responses = op["responses"]
        success = [code for code in responses if code.startswith("2")]
        assert success, f"{method} {path}: no 2xx answer declared"
        for code, answer in responses.items():
            if code == "304":
                assert "content" not in answer  # a 304 has no body
                continue
            assert answer.get("content"), f"{method} {path} {code}: no content declared"
            for media, body in answer["content"].items():
                schema = resolve(doc, body.get("schema") or {})
                assert schema, f"{method} {path} {code} {media}: empty (any) schema"
                if media == "application/json":
                    assert schema.get("type") == "object" and schema.get("properties"), (
                        f"{method} {path} {code}: untyped JSON answer {schema}")
                else:
                    assert schema.get("type") == "string"
        required = REQUIRED_STATUSES.get((method, path), set())
        assert required <= set(responses), f"{method} {path}: undocumented {required - set(responses)}"
    routing = doc["paths"]["/v1/routing"]["get"]["responses"]
    assert {"ETag"} <= set(routing["200"]["headers"]) and {"ETag"} <= set(routing["304"]["headers"])
    route = doc["components"]["schemas"]["Route"]
    assert {"served_as", "prompt"} <= set(route["properties"])
    assert not {"served_as", "prompt"} & set(route["required"])


def _populate(url: str, engine: Engine) -> None:
    """One of everything an answer can list: events, a route, versions, a job, decisions."""
    assert post(url, {"events": [event(1), event(2, "apology", "reject",
                                               crosstalk_source="greeting")]}).status_code == 202
    with session_scope(engine) as session:
        crud.set_routes(session, reason="test", routes={"greeting": {
            "adapter": "shared", "version": 1, "path": "/a/shared/v1", "sha256": "0" * 64}})
        session.add(AdapterVersion(
            adapter="shared", version=1, path="/a/shared/v1", sha256="0" * 64,
            status="promoted", ratios={"greeting": 0.6, "apology": 0.4}, promoted_at=2.0,
            eval={"candidate": {"tasks": {"greeting": {"quality": 0.9}}}}, reason="gate ok"))
        session.add(AdapterVersion(adapter="orphan", version=1, path="/a/orphan/v1",
                                   sha256="1" * 64))
        crud.create_job(session, adapter="shared", kind="retrain", params={"tasks": ["greeting"]})
        crud.record_decision(session, action="rebalance", task="apology", adapter="shared",
                             reason="crosstalk", signals={"crosstalk_rate": 0.4}, at_event=7)
    assert httpx.post(f"{url}/v1/tasks/apology/fork", headers=ADMIN).status_code == 202


def _declared(doc: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    answer = doc["paths"][path][method]["responses"][str(status)]
    return dict(answer["content"]["application/json"]["schema"])


def _check(doc: dict[str, Any], method: str, path: str, response: httpx.Response,
           model: type[BaseModel] | None = None, exclude_unset: bool = False) -> None:
    """The answer validates against the schema /openapi.json declares for its status, and
    ``model`` (the route's response model) reproduces it key for key."""
    body = response.json()
    schema = {**_declared(doc, method, path, response.status_code),
              "components": doc["components"]}
    errors = [e.message for e in jsonschema_rs.validator_for(schema).iter_errors(body)]
    assert not errors, (method, path, response.status_code, errors, body)
    if model is not None:
        again = model.model_validate(body).model_dump(mode="json", exclude_unset=exclude_unset)
        assert again == body, (path, body)


def test_every_answer_validates_against_its_declared_model(live_api: LiveServer,
                                                           engine: Engine) -> None:
    url = live_api.url
    _populate(url, engine)
    doc = openapi(url)
    reads: list[tuple[str, str, type[BaseModel]]] = [
        ("/v1/routing", "/v1/routing", models.RoutingTable),
        ("/v1/tasks", "/v1/tasks", models.Tasks),
        ("/v1/decisions?limit=10", "/v1/decisions", models.Decisions),
        ("/v1/status", "/v1/status", models.Status),
        ("/v1/adapters", "/v1/adapters", models.Adapters),
        ("/v1/jobs", "/v1/jobs", models.Jobs),
        ("/healthz", "/healthz", models.Health),
        ("/readyz", "/readyz", models.Readiness),
    ]
    for target, path, model in reads:
        r = httpx.get(f"{url}{target}")
        assert r.status_code == 200, (target, r.text)
        # A route leaves out the serving fields its table entry does not carry.
        _check(doc, "get", path, r, model, exclude_unset=path == "/v1/routing")
    # Each list really holds rows, so their item models were exercised.
    assert httpx.get(f"{url}/v1/routing").json()["routes"]["greeting"]["version"] == 1
    assert len(httpx.get(f"{url}/v1/decisions").json()["decisions"]) == 2
    adapters = httpx.get(f"{url}/v1/adapters").json()["adapters"]
    assert adapters["shared"]["versions"] and adapters["orphan"]["status"] == "unknown"
    assert len(httpx.get(f"{url}/v1/jobs").json()["jobs"]) == 1
    assert httpx.get(f"{url}/v1/status").json()["events"] >= 0

    metrics = httpx.get(f"{url}/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "adaptd_adapter_version" in metrics.text

    feedback, override = "/v1/feedback", "/v1/tasks/{task}/{action}"
    _check(doc, "post", feedback, post(url, event(3)), models.FeedbackAccepted)
    body = json.dumps(event(4)).encode()
    post(url, body=body, msg_id="msg_twice")
    replay = post(url, body=body, msg_id="msg_twice")
    assert replay.json()["replay"] == 1
    _check(doc, "post", feedback, replay, models.FeedbackAccepted)
    refusals = [
        (post(url, body=b"{not json"), 400),
        (httpx.post(f"{url}{feedback}", content=b"{}"), 401),
        (post(url, {"events": [event(i) for i in range(1001)]}), 413),
        (post(url, {"events": [event(5), event(6, task="nope")]}), 422),
    ]
    for response, status in refusals:
        assert response.status_code == status, response.text
        _check(doc, "post", feedback, response, models.Problem)
    assert refusals[-1][0].json()["errors"][0]["index"] == 1

    fork = f"{url}/v1/tasks/apology/fork"
    _check(doc, "post", override, httpx.post(fork, headers=ADMIN), models.OverrideAccepted)
    for response, status in [(httpx.post(fork), 401),
                             (httpx.post(fork, headers={"Authorization": "Bearer no"}), 403),
                             (httpx.post(f"{url}/v1/tasks/nope/fork", headers=ADMIN), 404)]:
        assert response.status_code == status, response.text
        _check(doc, "post", override, response, models.Problem)

    bad_limit = httpx.get(f"{url}/v1/jobs?limit=0")
    assert bad_limit.status_code == 422
    _check(doc, "get", "/v1/jobs", bad_limit)

    etag = httpx.get(f"{url}/v1/routing").headers["etag"]
    assert etag == '"routing-1"'
    unchanged = httpx.get(f"{url}/v1/routing", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.headers["etag"] == etag
    assert unchanged.content == b""


def test_database_down_answers_match_their_declared_503(settings: Settings) -> None:
    """With the database unreachable, every SQL-backed read answers its declared 503 and
    /readyz says which store is down, in its declared shape."""
    down = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none",
                       connect_args={"connect_timeout": 2})
    with LiveServer(create_app(settings, engine=down)) as server:
        doc = openapi(server.url)
        for path in ("/v1/routing", "/v1/tasks", "/v1/decisions", "/v1/status",
                     "/v1/adapters", "/v1/jobs"):
            r = httpx.get(f"{server.url}{path}", timeout=30)
            assert r.status_code == 503, (path, r.text)
            assert r.json() == {"detail": "database unavailable"}
            _check(doc, "get", path, r, models.Problem)
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["database"].startswith("unavailable") and ready.json()["redis"] == "ok"
        _check(doc, "get", "/readyz", ready, models.Readiness)
    down.dispose()


@pytest.mark.parametrize("extra", [{}, {"served_as": None}, {"served_as": "shared-v3",
                                        "prompt": {"kind": "tag", "tag": "<apology>"}}])
def test_route_passes_serving_fields_through(extra: dict[str, Any]) -> None:
    """A routing_table entry's `served_as` and `prompt` reach the answer as the table carries
    them (null stays null) and are left out when absent: the answer is the stored route."""
    entry = {"adapter": "shared", "version": 3, "path": "/a/shared/v3", "sha256": "2" * 64,
             **extra}
    assert _route(entry).model_dump(mode="json", exclude_unset=True) == entry
    assert _route({**entry, "unrelated": 1}).model_dump(mode="json", exclude_unset=True) == entry
