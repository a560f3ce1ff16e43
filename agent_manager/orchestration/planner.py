"""Goal → draft plan, written by a planner agent and validated before anyone sees it.

The planner is an ordinary agent run (RunManager.submit + wait), so it streams, routes and
times out like any run. Agents wrap their answer in all kinds of ways — markdown fences,
a ``{"response": ...}`` JSON envelope, prose before and after — so ``extract`` tries each
plausible reading. An invalid plan gets exactly one more try, with the validation errors
in the prompt. Planning never starts execution: the result is a draft for review.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from agent_manager.errors import AgentManagerError, BadRequest, ValidationFailed
from agent_manager.orchestration.plan import Issue, Plan, check, schema
from agent_manager.run_request import RunRequest
from agent_manager.runs import RunManager
from agent_manager.settings import Settings
from agent_manager.store import Database
from agent_manager.store import agents as agent_store

FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)
PLAN_START_RE = re.compile(r"^\s*(\{|(name|steps|max_parallel|description)\s*:)")
WRAPPER_KEYS = ("response", "result", "output", "text", "content", "answer")
RETRY_MARKER = "Your previous answer was not a valid plan"

INSTRUCTIONS = """You are the planner of Agent Manager. Turn the goal below into a plan: a DAG of steps that
run in parallel where their dependencies allow.

Rules:
- Reply with the plan only, in YAML (or JSON), matching the JSON Schema below.
- Step ids use only a-z, 0-9, '_' and '-', and are unique.
- An `agent` step names one of the registered agents and gives a `prompt`.
- A step may use an earlier step's result by writing {{{{ steps.<id>.output }}}} in its prompt, and must
  then list that step (directly or through others) in `depends_on`.
- `write_file` steps write `content` to a relative `path` in the orchestration's workspace.
- `shell` steps run `argv` (a list: program and arguments; no shell syntax).
- Steps that do not depend on each other run at the same time: only add real dependencies.

Example:
name: poem
steps:
  - id: write
    agent: {example_agent}
    prompt: "Write a poem about Rust"
  - id: critique
    agent: {example_agent}
    prompt: "Critique this poem:\\n{{{{ steps.write.output }}}}"
    depends_on: [write]
  - id: save
    action: write_file
    path: poem.txt
    content: "{{{{ steps.write.output }}}}"
    depends_on: [write]

Registered agents (name, kind):
{agents}

JSON Schema of a plan:
{schema}

Goal:
{goal}
"""


class PlannerFailed(ValidationFailed):
    code = "planner_failed"


@dataclass
class Draft:
    plan: Plan
    raw: str
    run_ids: list[str] = field(default_factory=list)


def prompt_for(goal: str, agents: list[dict[str, Any]]) -> str:
    listing = "\n".join(f"- {a['name']} ({a['kind']})" for a in agents) or "- (none registered)"
    example = agents[0]["name"] if agents else "my-agent"
    return INSTRUCTIONS.format(agents=listing, schema=json.dumps(schema(), separators=(",", ":")), goal=goal,
                               example_agent=example)


def retry_prompt(first: str, issues: list[Issue]) -> str:
    errors = "\n".join(f"- {i.text()}" for i in issues)
    return (f"{first}\n\n{RETRY_MARKER}. The validator said:\n{errors}\n\n"
            "Reply with the corrected plan only.")


def candidates(raw: str) -> list[str]:
    """Texts that might be the plan, most specific first: unwrapped envelopes, fenced blocks,
    the text from its first plan-looking line (with trailing prose cut at blank lines), all of it."""
    found: list[str] = []
    queue = [raw.strip()]
    while queue and len(found) < 64:
        text = queue.pop(0)
        envelope = _envelope(text)
        if envelope is not None:
            queue.insert(0, envelope.strip())
            continue
        found += [body.strip() for _lang, body in FENCE_RE.findall(text)]
        lines = text.splitlines()
        for index, line in enumerate(lines):
            if PLAN_START_RE.match(line):
                tail = lines[index:]
                found.append("\n".join(tail))
                found += ["\n".join(tail[:cut]) for cut in range(len(tail) - 1, 0, -1) if not tail[cut].strip()]
                if line.lstrip().startswith("{"):
                    found.append(_first_json_object("\n".join(tail)))
                break
        found.append(text)
        if "{" in text:
            found.append(_first_json_object(text[text.index("{"):]))
    return [c for c in found if c]


def _envelope(text: str) -> str | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict) and "steps" not in data:
        for key in WRAPPER_KEYS:
            if isinstance(data.get(key), str):
                return str(data[key])
    return None


def _first_json_object(text: str) -> str:
    try:
        obj, _end = json.JSONDecoder().raw_decode(text.lstrip())
    except ValueError:
        return ""
    return json.dumps(obj)


def extract(raw: str) -> Any:
    """The first candidate that parses to a mapping with ``steps`` and only plan keys (else the first
    with ``steps``, so validation can say what is wrong); a ``{"plan": …}`` is unwrapped."""
    fallback = None
    for text in candidates(raw):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and isinstance(data.get("plan"), dict) and "steps" not in data:
            data = data["plan"]
        if isinstance(data, dict) and "steps" in data:
            if set(data) <= set(Plan.model_fields):
                return data
            fallback = fallback or data
    return fallback


def read_plan(raw: str, agents: list[dict[str, Any]]) -> tuple[Plan | None, list[Issue]]:
    data = extract(raw)
    if data is None:
        return None, [Issue(None, None, "no plan found in the answer: reply with YAML or JSON that has `steps`")]
    plan, issues = check(data, agents)
    return (plan if not issues else None), issues


def planner_agent(db: Database, settings: Settings, ref: str | None) -> dict[str, Any]:
    name = ref or settings.default_planner
    if not name:
        raise BadRequest("no planner agent: pass \"planner\" (an agent name or id), or set the default_planner "
                         "setting (PATCH /api/settings {\"default_planner\": \"<agent>\"}, "
                         "AGENT_MANAGER_DEFAULT_PLANNER, or `agent-manager plan --planner AGENT`)",
                         {"field": "planner"})
    return agent_store.get(db, name)


async def draft(db: Database, settings: Settings, runs: RunManager, goal: str, planner: str | None = None, *,
                owner: str | None = None, user_trusted: bool = True, user_admin: bool = True) -> Draft:
    """Ask the planner for a plan; one more try with the errors if it is invalid."""
    agent = planner_agent(db, settings, planner)
    agents = agent_store.list_all(db)
    first = prompt_for(goal, agents)
    prompt = first
    run_ids: list[str] = []
    raw = ""
    issues: list[Issue] = []
    for _attempt in range(2):
        run = runs.submit(RunRequest(agent=agent, prompt=prompt, owner=owner, user_trusted=user_trusted,
                                     user_admin=user_admin))
        run_ids.append(run["id"])
        try:
            final = await runs.wait(run["id"])
        except asyncio.CancelledError:
            # Whoever asked is gone (the client disconnected, the service stops): a draft nobody
            # reads is not worth the planner's whole timeout.
            with contextlib.suppress(AgentManagerError):
                await runs.cancel(run["id"])
            raise
        if final["status"] != "succeeded":
            raise PlannerFailed(f"the planner run {final['id']} {final['status']}: {final['error'] or 'no answer'}",
                                {"run_ids": run_ids})
        raw = final["output"] or ""
        plan, issues = read_plan(raw, agents)
        if plan is not None:
            return Draft(plan, raw, run_ids)
        prompt = retry_prompt(first, issues)
    raise PlannerFailed("the planner did not produce a valid plan (after one retry with the errors): "
                        + "; ".join(i.text() for i in issues[:20]),
                        {"errors": [i.to_json() for i in issues], "raw": raw, "run_ids": run_ids})
