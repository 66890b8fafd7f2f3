"""Fuzzing the real HTTP API (`adaptd serve` as a subprocess) - never a 5xx, bounded memory.

- hypothesis: events with arbitrary JSON values in every field, unknown fields, giant numbers,
  NaN/Infinity, NUL and lone surrogates, invalid UTF-8, deep nesting, huge strings, batches,
  and weird headers (signed or not), sent as raw bytes over a socket so nothing is normalised
  on the way;
- schemathesis: every operation of the app's own OpenAPI spec (/openapi.json): never a 5xx,
  and every answer has a declared status, its declared headers and its declared schema.

CI size: ~400 hypothesis examples + ~25 schemathesis cases per operation. With
ADAPTD_RELIABILITY_SCALE=full: > 10,000 cases. The server's RSS is read before and after.
"""

from __future__ import annotations

import json
import select
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from daemon.webhooks import sign
from tests.conftest import prepared_engine
from tests.helpers import SECRET, event
from tests.reliability._support import api_process, scaled
from tests.support.processes import rss_bytes

EXAMPLES = {  # hypothesis examples per test (CI total ~430; full ~12,000)
    "events": scaled(200, 6000),
    "bodies": scaled(100, 3000),
    "headers": scaled(100, 2500),
}
SCHEMA_CASES = scaled(25, 250)  # per operation
RSS_GROWTH_LIMIT = 96 * 2**20
FUZZ = settings(deadline=None, database=None, derandomize=False, print_blob=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, Any]]:
    """One `adaptd serve` for the module (its own prefix and SQLite file)."""
    from daemon.settings import Settings

    work = tmp_path_factory.mktemp("fuzz")
    prefix = f"f{uuid.uuid4().hex[:10]}:"
    s = Settings(redis_url=redis_url, key_prefix=prefix, webhook_secret=SECRET,
                 database_url=f"sqlite:///{work / 'adaptd.db'}", suite="builtin:festive-zh",
                 artifacts_dir=work / "artifacts", admin_token="admin-token-for-fuzz")
    prepared_engine(s).dispose()
    with api_process(s, work) as (proc, url, log):
        host, port = url.removeprefix("http://").split(":")
        info = {"proc": proc, "url": url, "host": host, "port": int(port), "log": log,
                "rss": [], "statuses": {}, "cases": 0}
        # Warm up so the baseline RSS includes imports, thread pool and connection pools.
        for i in range(50):
            body = json.dumps({"events": [event(f"warm{i}_{j}") for j in range(20)]}).encode()
            send(info, body, signed_headers_for(body))
        info["rss"].append(rss_bytes(proc.pid))
        yield info
        _cleanup(redis_url, prefix)


def _cleanup(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i:i + 1000])


def signed_headers_for(body: bytes, msg_id: str | None = None, ts: int | None = None,
                       secret: str = SECRET) -> dict[str, bytes]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = int(time.time()) if ts is None else ts
    return {"webhook-id": msg_id.encode(), "webhook-timestamp": str(ts).encode(),
            "webhook-signature": sign(secret, msg_id, ts, body).encode(),
            "content-type": b"application/json"}


def send(info: dict[str, Any], body: bytes, headers: dict[str, bytes], *,
         path: str = "/v1/feedback", method: str = "POST") -> int:
    """One request as raw bytes on a fresh connection; returns the status (or -1 when the
    server closed the connection without an answer)."""
    head = [f"{method} {path} HTTP/1.1".encode(), f"host: {info['host']}".encode(),
            b"connection: close", f"content-length: {len(body)}".encode()]
    head += [k.encode("latin-1") + b": " + v for k, v in headers.items()]
    chunks: list[bytes] = []
    with socket.create_connection((info["host"], info["port"]), timeout=30) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n")
        for at in range(0, len(body), 65536):
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered early (e.g. 413): stop sending, read the answer
            try:
                sock.sendall(body[at:at + 65536])
            except (ConnectionResetError, BrokenPipeError):
                break
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except ConnectionResetError:
            pass
    answer = b"".join(chunks)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else -1
    info["statuses"][status] = info["statuses"].get(status, 0) + 1
    info["cases"] += 1
    return status


# ---------------------------------------------------------------------------------------------
# Strategies

NASTY_TEXT = st.sampled_from([
    "", " ", "\x00", "a\x00b", "\ud800", "\udfff", "x\ud83d", "\u202e", "🎉" * 10, "新年" * 5,
    "../../etc/passwd", "a:b", "*", "adaptd:events", "%s%n", "\r\n", "\\u0000", "null",
    "x" * 129, "é", "\ufeff",
])
TEXT = st.one_of(st.text(max_size=40), NASTY_TEXT,
                 st.integers(0, 20_000).map(lambda n: "长" * n),
                 st.integers(8000, 9000).map(lambda n: "x" * n))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**300), 10**300),
    st.floats(allow_nan=True, allow_infinity=True), TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=10,
)
FIELDS = ["id", "task", "adapter", "prompt", "output", "verdict", "rating", "correction",
          "crosstalk_source", "occurred_at", "meta"]
FIELD_VALUES = {
    "id": st.one_of(TEXT, st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True)),
    "task": st.one_of(TEXT, st.sampled_from(["greeting", "thanks", "apology", "nope", "Greeting"])),
    "verdict": st.one_of(TEXT, st.sampled_from(["accept", "reject", "edit"])),
    "rating": st.one_of(SCALARS, st.floats(-1, 2)),
    "occurred_at": st.one_of(TEXT, st.sampled_from([
        "2026-11-21T10:00:00Z", "2026-11-21T10:00:00", "1999-12-31T23:59:59Z",
        "9999-12-31T23:59:59Z", "2026-11-21T10:00:00+25:00", "0", "now"]), st.integers()),
    "meta": st.one_of(JSON_VALUES, st.dictionaries(TEXT, SCALARS, max_size=40)),
}


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    ev: dict[str, Any] = event(f"fz_{uuid.uuid4().hex}",
                               draw(st.sampled_from(["greeting", "apology", "thanks"])),
                               draw(st.sampled_from(["accept", "reject", "edit"])))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        choice = draw(st.integers(0, 2))
        if choice == 0:
            ev.pop(name, None)
        else:
            ev[name] = draw(FIELD_VALUES.get(name, JSON_VALUES) if choice == 1 else JSON_VALUES)
    for key in draw(st.lists(TEXT, max_size=2)):  # unknown fields
        ev[key] = draw(JSON_VALUES)
    return ev


@st.composite
def nasty_valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """Events of the right shape whose free-text fields hold hostile text (NUL, lone
    surrogates, RTL marks, 8 KiB edges): the API must either store them or refuse them."""
    ev: dict[str, Any] = event(f"nv_{uuid.uuid4().hex}", "apology", "edit",
                               crosstalk_source="greeting", adapter="shared@3", rating=0.5)
    for name in draw(st.lists(st.sampled_from(["prompt", "output", "correction", "meta"]),
                              min_size=1, max_size=3, unique=True)):
        if name == "meta":
            ev["meta"] = draw(st.dictionaries(st.text(max_size=10) | NASTY_TEXT,
                                              SCALARS, max_size=5))
        else:
            ev[name] = draw(st.one_of(NASTY_TEXT, st.text(min_size=1, max_size=30)))
    return ev


def dumps(value: Any, ascii_only: bool) -> bytes:
    text = json.dumps(value, ensure_ascii=ascii_only)
    return text.encode("utf-8", errors="surrogatepass")  # lone surrogates as raw (bad) UTF-8


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.slow
@pytest.mark.timeout(scaled(240, 7200))
@settings(FUZZ, max_examples=EXAMPLES["events"])
@example(events=[event("x", id="\ud800")], batch=False, ascii_only=True)
@example(events=[event("x", prompt="\udfff")], batch=True, ascii_only=True)
@example(events=[event("x", meta={"k": float("nan")})], batch=False, ascii_only=True)
@given(events=st.lists(mutated_events() | nasty_valid_events(), min_size=1, max_size=5),
       batch=st.booleans(),
       ascii_only=st.booleans())
def test_fuzzed_events_never_5xx(server: dict[str, Any], events: list[dict[str, Any]],
                                 batch: bool, ascii_only: bool) -> None:
    payload: Any = {"events": events} if batch or len(events) > 1 else events[0]
    body = dumps(payload, ascii_only)
    status = send(server, body, signed_headers_for(body))
    assert status < 500 and status != -1, (status, body[:300])



@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 7))
    if kind == 0:  # invalid UTF-8 spliced into a valid body
        body = json.dumps(event("u8")).encode()
        at = draw(st.integers(0, len(body)))
        return body[:at] + draw(st.binary(min_size=1, max_size=8).filter(
            lambda b: not _is_utf8(b))) + body[at:]
    if kind == 1:  # deep nesting, top level or inside an event
        depth = draw(st.integers(100, 200_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        nest = opener * depth + "1" + closer * depth
        where = draw(st.sampled_from(["top", "meta", "events"]))
        if where == "top":
            return nest.encode()
        if where == "meta":
            return (json.dumps(event("deep"))[:-1] + ', "meta": {"x": ' + nest + "}}").encode()
        return ('{"events": [' + nest + "]}").encode()
    if kind == 2:  # giant numbers as raw tokens (json.dumps would refuse > 4300 digits)
        digits = draw(st.integers(300, 20_000))
        field = draw(st.sampled_from(["rating", "occurred_at", "meta", "id", "prompt"]))
        num = draw(st.sampled_from(["9" * digits, "-" + "9" * digits, f"1e{digits}",
                                    "0." + "0" * digits + "1", "1" + "0" * digits + ".5"]))
        base = json.dumps(event("big"))[:-1]
        value = '{"k": ' + num + "}" if field == "meta" else num
        return (base + f', "{field}": {value}' + "}").encode()
    if kind == 3:  # huge strings (around and beyond the field limits; body cap is 4 MiB)
        n = draw(st.sampled_from([8192, 8193, 16384, 16385, 100_000, 1_000_000, 3_000_000]))
        field = draw(st.sampled_from(["prompt", "output", "correction", "id", "task", "meta"]))
        ev = event("huge", verdict="edit")
        ev[field] = {"k": "x" * n} if field == "meta" else "x" * n
        return json.dumps(ev).encode()
    if kind == 4:  # many events / the batch limit
        n = draw(st.sampled_from([0, 1, 999, 1000, 1001, 5000]))
        return json.dumps({"events": [event(f"n{uuid.uuid4().hex[:8]}_{i}") for i in range(n)]}
                          ).encode()
    if kind == 5:  # JSON that is not an event at all
        return dumps(draw(JSON_VALUES), draw(st.booleans()))
    if kind == 6:  # NaN / Infinity tokens and duplicate keys
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "true"]))
        field = draw(st.sampled_from(["rating", "meta", "occurred_at"]))
        value = '{"k": ' + token + "}" if field == "meta" else token
        return (json.dumps(event("nan"))[:-1] + f', "{field}": {value}, "{field}": {value}' +
                "}").encode()
    return draw(st.binary(max_size=2000))  # arbitrary bytes


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(scaled(240, 7200))
@settings(FUZZ, max_examples=EXAMPLES["bodies"])
@given(body=raw_bodies())
def test_fuzzed_raw_bodies_never_5xx(server: dict[str, Any], body: bytes) -> None:
    status = send(server, body, signed_headers_for(body))
    assert status < 500 and status != -1, (status, body[:300])


HEADER_TEXT = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
            max_size=60),
    st.sampled_from(["", " ", "v1,", "v1,AAAA", "v1,!!!", "v2,abc", "v1,abc v1,def", ",", "0",
                     "-1", "1e9", "nan", "99999999999999999999999999", "9" * 5000, "１２３",
                     " 1700000000 ", "1_700_000_000", "Bearer", "whsec_", "é"]),
)


@st.composite
def header_sets(draw: st.DrawFn) -> tuple[dict[str, bytes], bytes]:
    body = json.dumps(event(f"h{uuid.uuid4().hex[:10]}")).encode()
    msg_id = draw(st.one_of(st.just(f"msg_{uuid.uuid4().hex}"), HEADER_TEXT))
    ts_value = draw(st.one_of(
        st.integers(-400, 400).map(lambda off: str(int(time.time()) + off)),
        st.integers().map(str), HEADER_TEXT))
    try:
        ts_int = int(ts_value)
        sig = sign(SECRET, msg_id, ts_int, body) if draw(st.booleans()) else draw(HEADER_TEXT)
    except ValueError:
        sig = draw(HEADER_TEXT)
    headers = {"webhook-id": msg_id, "webhook-timestamp": ts_value, "webhook-signature": sig,
               "content-type": draw(st.sampled_from(["application/json", "text/plain", "",
                                                     "application/json; charset=latin-1"]))}
    for name in draw(st.lists(st.sampled_from(list(headers)), max_size=2, unique=True)):
        del headers[name]  # missing headers
    extra = draw(st.dictionaries(
        st.sampled_from(["x-forwarded-for", "authorization", "webhook-signature ",
                         "x-" + "a" * 200, "transfer-encoding-x", "cookie", "accept"]),
        HEADER_TEXT, max_size=3))
    headers.update(extra)
    return {k: v.encode("utf-8") for k, v in headers.items()}, body


@pytest.mark.slow
@pytest.mark.timeout(scaled(240, 7200))
@settings(FUZZ, max_examples=EXAMPLES["headers"])
@given(case=header_sets())
def test_fuzzed_headers_never_5xx(server: dict[str, Any],
                                  case: tuple[dict[str, bytes], bytes]) -> None:
    headers, body = case
    status = send(server, body, headers)
    assert status < 500 and status != -1, (status, headers)



def test_big_bodies(server: dict[str, Any]) -> None:
    """The 4 MiB cap is enforced before parsing; just under it the body is parsed normally."""
    under = json.dumps(event("big1", prompt="x" * (4 * 2**20 - 400))).encode()
    assert send(server, under, signed_headers_for(under)) == 422  # prompt > 8 KiB
    over = b'{"a": "' + b"x" * (4 * 2**20) + b'"}'
    assert send(server, over, signed_headers_for(over)) == 413
    assert send(server, b"", signed_headers_for(b"")) in (400, 422)


@pytest.mark.slow
@pytest.mark.timeout(scaled(240, 7200))
def test_schemathesis_openapi_no_5xx(server: dict[str, Any]) -> None:
    """Every operation of /openapi.json with schemathesis-generated requests: no 5xx, and each
    answer conforms to what the spec declares (status, headers, body schema)."""
    import schemathesis
    from hypothesis import given as h_given
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{server['url']}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("POST", "/v1/feedback"), ("GET", "/v1/routing"), ("GET", "/v1/decisions"),
        ("POST", "/v1/tasks/{task}/{action}"), ("GET", "/metrics")}
    failures: list[str] = []
    count = 0
    for op in operations:
        @settings(FUZZ, max_examples=SCHEMA_CASES)
        @h_given(case=op.as_strategy())
        def run(case: Any) -> None:
            nonlocal count
            if case.path == "/v1/feedback":
                # Sign whatever body schemathesis chose, so requests get past the signature.
                given_body = case.body if isinstance(
                    case.body, (dict, list, str, int, float, bool)) else None
                body = b"" if given_body is None else json.dumps(given_body).encode()
                case.headers = {**(case.headers or {}),
                                **{k: v.decode() for k, v in signed_headers_for(body).items()}}
            response = case.call(base_url=server["url"], timeout=30)
            count += 1
            server["statuses"][response.status_code] = (
                server["statuses"].get(response.status_code, 0) + 1)
            case.validate_response(response, checks=[
                not_a_server_error, status_code_conformance, response_headers_conformance,
                response_schema_conformance])

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{op.method.upper()} {op.path}: {str(exc)[:500]}")
    server["cases"] += count
    print(f"\nschemathesis: {count} cases over {len(operations)} operations")
    assert not failures, "\n".join(failures)


def test_zz_server_memory_bounded(server: dict[str, Any]) -> None:
    """Runs last in this module: after every fuzz case above, the server's RSS grew by less
    than a fixed bound (it does not scale with the number of cases: the full run sends 25x
    more and must stay under the same bound)."""
    server["rss"].append(rss_bytes(server["proc"].pid))
    growth = server["rss"][-1] - server["rss"][0]
    print(f"\nfuzz: {server['cases']} requests, statuses "
          f"{dict(sorted(server['statuses'].items()))}, server RSS "
          f"{server['rss'][0] / 2**20:.1f} -> {server['rss'][-1] / 2**20:.1f} MiB")
    assert server["proc"].poll() is None, "the server died"
    assert growth < RSS_GROWTH_LIMIT, f"server RSS grew by {growth / 2**20:.1f} MiB"
