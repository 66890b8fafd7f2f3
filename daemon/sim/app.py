"""The production-app simulator: a client of the daemon through HTTP only.

For each request it draws a task from the phase's traffic mix, builds a prompt, asks
``/v1/routing`` (with ETag) which adapter version serves that task, generates with that
version (sampling, as production does), judges the output and posts the verdict as signed
feedback (with ``messages``, the conversation, for a task whose requests come as a chat).
New routes are picked up as soon as they are promoted. It generates in-process, or
through a serving engine (:class:`EngineGenerator`: the routed name and prompt contract).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from daemon.sim.feedback import FeedbackModel, FeedbackSpec, Pending
from daemon.sim.judge import judge
from daemon.webhooks import signed_headers
from storage.suite import Suite
from workers.serving.contract import build_prompt, contract_messages
from workers.training.data import fresh_request
from workers.training.encode import Conversation, Prompt


class Generator(Protocol):
    """What the simulator needs of a model server (workers.training.generate.AdapterServer)."""

    def generate(self, task: str, prompts: Sequence[Prompt], *, adapter: str | None = None,
                 version: int | None = None, path: Path | None = None,
                 sha256: str | None = None, **kwargs: Any) -> list[str]: ...


class EngineGenerator:
    """Generates through a serving engine's OpenAI-compatible API, as a production app does:
    the route's ``served_as`` as ``model`` and the route's prompt contract (docs/contracts.md
    section 11): plain prompts in one ``/v1/completions`` request, a conversation under a chat
    contract through ``/v1/chat/completions`` (the engine applies the base's chat template);
    sampling as the in-process generator does (``temperature`` 0: greedy)."""

    def __init__(self, url: str, *, http: httpx.Client | None = None, base_name: str = "base",
                 max_tokens: int = 48, temperature: float = 0.8, top_p: float = 0.95):
        self.url, self.base_name = url.rstrip("/"), base_name
        self.http = http or httpx.Client(timeout=120)
        self.sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}

    def requests(self, prompts: Sequence[Prompt], route: dict[str, Any] | None, *,
                 seed: int, max_tokens: int | None = None,
                 ) -> list[tuple[str, dict[str, Any], list[int]]]:
        """The engine calls that answer ``prompts`` under ``route``: (path, body, indices of
        the prompts it answers, in the order of its choices). ``max_tokens``: the answer
        length the app allows, when it is not the generator's."""
        contract = (route or {}).get("prompt") or {"prefix": "", "suffix": "",
                                                   "add_special_tokens": True}
        common: dict[str, Any] = {"model": route["served_as"] if route else self.base_name,
                                  "seed": seed, **self.sampling}
        if max_tokens is not None:
            common["max_tokens"] = max_tokens
        if contract.get("stop_token_ids"):
            common["stop_token_ids"] = list(contract["stop_token_ids"])
        chat = [i for i, p in enumerate(prompts)
                if isinstance(p, Conversation) and contract.get("style") == "chat"]
        calls = [("/v1/chat/completions",
                  {**common, "messages": contract_messages(contract, prompts[i])}, [i])
                 for i in chat]
        chosen = set(chat)
        rest = [i for i in range(len(prompts)) if i not in chosen]
        if rest:
            calls.append(("/v1/completions", {
                **common, "prompt": [build_prompt(contract, prompts[i]) for i in rest],
                "add_special_tokens": contract["add_special_tokens"]}, rest))
        return calls

    def generate_routed(self, task: str, prompts: Sequence[Prompt], route: dict[str, Any] | None,
                        *, seed: int, max_tokens: int | None = None) -> list[str]:
        calls = self.requests(prompts, route, seed=seed, max_tokens=max_tokens)
        outputs = [""] * len(prompts)
        # One chat request per conversation: sent together, the engine batches them.
        with ThreadPoolExecutor(max_workers=min(8, len(calls)) or 1) as pool:
            for (_, _, idx), texts in zip(calls, pool.map(self._call, calls), strict=True):
                for i, text in zip(idx, texts, strict=True):
                    outputs[i] = text
        return outputs

    def _call(self, call: tuple[str, dict[str, Any], list[int]]) -> list[str]:
        path, body, _ = call
        resp = self.http.post(f"{self.url}{path}", json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"serving engine refused {body['model']}: {resp.status_code} "
                               f"{resp.text[:300]}")
        choices = sorted(resp.json()["choices"], key=lambda c: c["index"])
        return [str((c["message"]["content"] if "message" in c else c["text"]) or "").strip()
                for c in choices]


@dataclass
class Tally:
    """Judged answers of one task over a span of events.

    >>> a, b = Tally(), Tally()
    >>> a.add(True, None); a.add(False, "greeting"); b.add(False, "greeting")
    >>> a.merge(b); a.as_report()
    {'events': 3, 'acceptance': 0.3333, 'crosstalk_rate': 0.6667, 'crosstalk_sources': {'greeting': 2}}
    """

    events: int = 0
    accepted: int = 0
    crosstalk: int = 0
    # Crosstalk answers by the task whose style they carried: which co-task leaks into which.
    sources: dict[str, int] = field(default_factory=dict)

    def add(self, accepted: bool, crosstalk_source: str | None) -> None:
        self.events += 1
        self.accepted += accepted
        if crosstalk_source is not None:
            self.crosstalk += 1
            self.sources[crosstalk_source] = self.sources.get(crosstalk_source, 0) + 1

    def merge(self, other: Tally) -> None:
        self.events += other.events
        self.accepted += other.accepted
        self.crosstalk += other.crosstalk
        for source, n in other.sources.items():
            self.sources[source] = self.sources.get(source, 0) + n

    def as_report(self) -> dict[str, Any]:
        return {"events": self.events,
                "acceptance": round(self.accepted / self.events, 4) if self.events else None,
                "crosstalk_rate": round(self.crosstalk / self.events, 4) if self.events else None,
                "crosstalk_sources": dict(sorted(self.sources.items()))}


@dataclass
class Routing:
    """The app's copy of the routing table, refreshed with If-None-Match."""

    etag: str | None = None
    revision: int = 0
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def refresh(self, http: httpx.Client, url: str) -> bool:
        headers = {"If-None-Match": self.etag} if self.etag else {}
        resp = http.get(f"{url}/v1/routing", headers=headers)
        if resp.status_code == 304:
            return False
        resp.raise_for_status()
        body = resp.json()
        self.etag, self.revision, self.routes = resp.headers.get("etag"), body["revision"], body["routes"]
        return True


class AppSimulator:
    """Draws requests, generates with the routed adapter, judges and posts feedback.

    ``feedback`` says how users rate (``daemon.sim.feedback``): a rated answer's rating is
    posted when it lands, possibly several requests later and after later ones; with
    ``post_unrated`` every other answer is posted at once with verdict ``unrated``."""

    def __init__(self, *, suite: Suite, url: str, secret: str,
                 generator: Generator | EngineGenerator, seed: int,
                 edit_share: float = 0.3, http: httpx.Client | None = None,
                 on_route_change: Callable[[Routing], None] | None = None,
                 feedback: FeedbackSpec | None = None,
                 max_new_tokens: int | None = None):
        self.suite, self.url, self.secret, self.generator = suite, url, secret, generator
        # Three independent random streams (common random numbers): the requests (tasks and
        # prompts) and the sampling seeds never depend on how earlier answers were judged, so
        # two runs of one seed serve the very same requests whatever the policy does, and their
        # per-task figures compare answer for answer. Users' edits draw on their own stream.
        self.traffic_rng = random.Random(f"{seed}/traffic")
        self.sampling_rng = random.Random(f"{seed}/sampling")
        self.user_rng = random.Random(f"{seed}/user")
        self.seed = seed
        self.edit_share = edit_share
        # The answer length the app allows (None: the generator's default).
        self.sampling: dict[str, Any] = ({} if max_new_tokens is None
                                         else {"max_new_tokens": max_new_tokens})
        self.http = http or httpx.Client(timeout=60)
        self.routing = Routing()
        self.on_route_change = on_route_change
        self.sent = 0
        self.correction_pool = {t: suite.seed_examples(t, seed=seed + 1) for t in suite.tasks}
        self.feedback = feedback or FeedbackSpec()
        self.users = FeedbackModel(self.feedback, seed)
        self.pending = Pending()

    def step(self, traffic: dict[str, float], n: int, tallies: dict[str, Tally],
             truth: dict[str, Tally] | None = None) -> list[dict[str, Any]]:
        """Serve ``n`` requests of a traffic mix; post the feedback that lands meanwhile
        (ratings of earlier answers too); return the posted events. ``tallies`` count the
        ratings given to these answers (when they land does not matter), ``truth`` the judge
        over every answer served."""
        if self.routing.refresh(self.http, self.url) and self.on_route_change:
            self.on_route_change(self.routing)
        names = sorted(traffic)
        tasks = self.traffic_rng.choices(names, weights=[traffic[t] for t in names], k=n)
        by_task: dict[str, list[int]] = {}
        for i, task in enumerate(tasks):
            by_task.setdefault(task, []).append(i)
        prompts = [fresh_request(self.suite, t, self.traffic_rng) for t in tasks]
        outputs: list[str] = [""] * n
        for task, idx in sorted(by_task.items()):
            route = self.routing.routes.get(task)
            seed = self.sampling_rng.randrange(2**31)
            if isinstance(self.generator, EngineGenerator):
                texts = self.generator.generate_routed(
                    task, [prompts[i] for i in idx], route, seed=seed,
                    max_tokens=self.sampling.get("max_new_tokens"))
            else:
                kwargs: dict[str, Any] = {}
                if route is not None:
                    kwargs = {"adapter": route["adapter"], "version": route["version"],
                              "path": Path(route["path"]), "sha256": route["sha256"]}
                texts = self.generator.generate(task, [prompts[i] for i in idx], seed=seed,
                                                **self.sampling, **kwargs)
            for i, text in zip(idx, texts, strict=True):
                outputs[i] = text
        now = datetime.now(UTC).isoformat()
        landed: list[tuple[int, dict[str, Any]]] = []  # unrated answers, by request index
        for task, prompt, output in zip(tasks, prompts, outputs, strict=True):
            verdict = judge(self.suite, task, output)
            route = self.routing.routes.get(task)
            event: dict[str, Any] = {
                "id": f"sim_{self.seed}_{self.sent}", "task": task,
                **({"messages": prompt.as_messages()} if isinstance(prompt, Conversation)
                   else {"prompt": prompt}),
                # A byte-level model can emit a NUL, which no event may carry (section 3).
                "output": output.replace("\x00", "") or "(empty)", "occurred_at": now,
                "adapter": f"{route['adapter']}@{route['version']}" if route else None,
                "meta": {"judge": verdict.reason},
            }
            if event["adapter"] is None:
                del event["adapter"]
            if truth is not None:
                truth.setdefault(task, Tally()).add(verdict.accepted, verdict.crosstalk_source)
            rating = self.users.rate(verdict)
            if rating is not None:
                self._rated(event, rating.accepted, rating.crosstalk_source)
                tallies.setdefault(task, Tally()).add(rating.accepted, rating.crosstalk_source)
                self.pending.push(self.sent + rating.delay, event)
            elif self.feedback.post_unrated:
                landed.append((self.sent, {**event, "verdict": "unrated"}))
            self.sent += 1
        events = self._merge(landed, self.sent - 1)
        if events:
            self.post(events)
        return events

    def flush(self) -> list[dict[str, Any]]:
        """Post every rating still on its way (the run ends); return them."""
        events = self.pending.flush()
        if events:
            self.post(events)
        return events

    def _rated(self, event: dict[str, Any], accepted: bool, source: str | None) -> None:
        event["verdict"] = "accept" if accepted else "reject"
        event["rating"] = 1.0 if accepted else 0.0
        if source:
            event["crosstalk_source"] = source
        if not accepted and self.user_rng.random() < self.edit_share:
            # Some users fix the output themselves: the most valuable training signal.
            event["verdict"] = "edit"
            event["correction"] = self.user_rng.choice(self.correction_pool[event["task"]]).response

    def _merge(self, unrated: list[tuple[int, dict[str, Any]]], served: int) -> list[dict[str, Any]]:
        """Unrated answers and the ratings landing by request ``served``, in landing order."""
        both = [(at, 0, k, e) for k, (at, e) in enumerate(unrated)]
        both += [(at, 1, k, e) for k, (at, e) in enumerate(self.pending.due(served))]
        return [e for *_, e in sorted(both, key=lambda x: x[:3])]

    def post(self, events: list[dict[str, Any]]) -> None:
        body = json.dumps({"events": events}, ensure_ascii=False).encode()
        headers = signed_headers(self.secret, f"msg_{uuid.uuid4().hex}", int(time.time()), body)
        for attempt in range(5):  # a 503 means nothing was stored: retrying is safe
            resp = self.http.post(f"{self.url}/v1/feedback", content=body, headers=headers)
            if resp.status_code == 202:
                return
            if resp.status_code != 503:
                raise RuntimeError(f"feedback refused: {resp.status_code} {resp.text[:500]}")
            time.sleep(0.5 * (attempt + 1))
        raise RuntimeError("feedback refused: the daemon kept answering 503")
