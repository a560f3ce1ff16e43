"""The plan format (DESIGN 3.4): a pydantic model, its JSON Schema, and validation.

Why validation is more than the pydantic model: a user (or a planner agent) writing a plan
needs to hear *which step* is wrong and why — "step 'critique': depends_on: unknown step
'wrte'" — not a pydantic location like ``steps.1.depends_on.0``. So the model checks the
shape, and ``check`` turns its errors into step-named issues and then checks the graph:
duplicate ids, unknown dependencies, cycles (named), template references to steps that are
not upstream, unknown agents, per-action required fields and paths escaping the workspace.
"""

from __future__ import annotations

import heapq
import json
import re
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from agent_manager import plugins
from agent_manager.errors import ValidationFailed
from agent_manager.models import RequestedBackend

ACTIONS = ("agent", "write_file", "shell")
ID_PATTERN = r"^[a-z0-9_-]+$"
ID_RE = re.compile(ID_PATTERN)
# {{ steps.<id>.output }}: the only template; substituted as plain text, never evaluated.
REF_RE = re.compile(r"\{\{\s*steps\.([^\s.}]+)\.([^\s}]+)\s*\}\}")
MAX_TEXT = 1_000_000
ACTION_FIELDS = {"agent": {"agent", "prompt"}, "write_file": {"path", "content"}, "shell": {"argv"}}
TEMPLATED = ("prompt", "content", "argv")


class Step(BaseModel):
    """One node of the plan. Which fields apply depends on ``action``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., max_length=64, pattern=ID_PATTERN, description="unique; [a-z0-9_-]+")
    action: Literal["agent", "write_file", "shell"] | None = Field(
        None, description="agent (the default when `agent` is set), write_file or shell")
    agent: str | None = Field(None, description="agent name or id (action agent)")
    prompt: str | None = Field(None, max_length=MAX_TEXT, description="the prompt (action agent); templated")
    path: str | None = Field(None, max_length=4096,
                             description="file to write, relative to the orchestration's workspace (write_file)")
    content: str | None = Field(None, max_length=MAX_TEXT, description="what to write (write_file); templated")
    argv: list[str] | None = Field(None, max_length=1024,
                                   description="program and arguments, never a shell string (shell); templated")
    depends_on: list[str] = Field(default_factory=list, description="ids of steps that must succeed first")
    retries: int = Field(0, ge=0, le=10, description="extra attempts after a failure")
    retry_delay_s: float = Field(1.0, ge=0, le=3600,
                                 description="first back-off delay; doubles on every further retry")
    timeout_s: float | None = Field(None, gt=0, le=7 * 24 * 3600, description="per attempt")
    backend: RequestedBackend | None = Field(
        None, description="where this step's run goes (an installed backend, or auto); null follows the agent / "
                          "routing policy")
    network: bool | None = Field(None, description="shell steps: let the command use the network "
                                 "(default: no network where the backend can cut it; agent steps follow their agent)")

    @field_validator("depends_on", mode="before")
    @classmethod
    def _one_dependency(cls, value: Any) -> Any:
        """``depends_on: write`` is accepted as ``[write]`` (a common hand-written form)."""
        return [value] if isinstance(value, str) else value

    @property
    def kind(self) -> str:
        """The effective action: explicit, else ``agent`` when an agent is named."""
        return self.action or ("agent" if self.agent is not None else "")

    def templated_texts(self) -> list[tuple[str, str]]:
        """(field, text) of every field templating applies to."""
        texts = [(name, getattr(self, name)) for name in ("prompt", "content") if getattr(self, name) is not None]
        texts += [(f"argv[{i}]", arg) for i, arg in enumerate(self.argv or [])]
        return texts

    def references(self) -> list[str]:
        return [m.group(1) for _, text in self.templated_texts() for m in REF_RE.finditer(text)]


class Plan(BaseModel):
    """A named DAG of steps; see docs/plans.md."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("plan", min_length=1, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    max_parallel: int | None = Field(None, ge=1, le=1024,
                                     description="steps running at once (default: the service setting)")
    steps: list[Step] = Field(..., min_length=1, max_length=5000)
    # step id -> step, built on first use: the engine looks a step up per hop, and a scan made
    # a 5,000-step plan quadratic. Rebuilt when ``steps`` is another list (a copy with new steps)
    # or changed length, and checked on every hit.
    _by_id: dict[str, Step] = PrivateAttr(default_factory=dict)
    _indexed: list[Step] | None = PrivateAttr(default=None)

    def step(self, step_id: str) -> Step:
        found = self._by_id.get(step_id)
        if (found is None or found.id != step_id or self._indexed is not self.steps
                or len(self._by_id) != len(self.steps)):
            self._by_id = {step.id: step for step in reversed(self.steps)}  # the first of a duplicate id wins
            self._indexed = self.steps
            found = self._by_id.get(step_id)
        if found is None:
            raise KeyError(step_id)
        return found


@dataclass(frozen=True)
class Issue:
    """One problem, named by step (None for the plan itself) and field."""

    step: str | None
    field: str | None
    message: str

    def text(self) -> str:
        where = f"step {self.step!r}: " if self.step is not None else ""
        return f"{where}{self.field + ': ' if self.field else ''}{self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "field": self.field, "message": self.text()}


class PlanInvalid(ValidationFailed):
    """422 whose details list every issue, each naming its step."""

    code = "invalid_plan"

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        super().__init__("invalid plan: " + "; ".join(i.text() for i in issues[:20]),
                         [i.to_json() for i in issues])


def schema() -> dict[str, Any]:
    """The published JSON Schema of a plan (GET /api/plans/schema)."""
    data = Plan.model_json_schema()
    # The installed backends, from the registry (a plugin installed with pip is valid here too).
    backend = data["$defs"]["Step"]["properties"]["backend"]
    backend["anyOf"] = [{"type": "string", "enum": plugins.backend_choices(allow_auto=True)}, {"type": "null"}]
    data["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    data["title"] = "Agent Manager plan"
    return data


def parse_text(text: str) -> Any:
    """YAML or JSON text (JSON is YAML) → data; a syntax error is a 422 naming the line."""
    if len(text) > 5 * MAX_TEXT:
        raise PlanInvalid([Issue(None, None, "the plan text is too large")])
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PlanInvalid([Issue(None, None, f"not valid YAML/JSON{where}: {problem}")]) from None


def load(data: Any, agents: list[dict[str, Any]] | None = None) -> Plan:
    """Validated plan or ``PlanInvalid``. ``data`` may be a mapping or YAML/JSON text."""
    plan, issues = check(data, agents)
    if plan is None or issues:
        raise PlanInvalid(issues)
    return plan


def check(data: Any, agents: list[dict[str, Any]] | None = None) -> tuple[Plan | None, list[Issue]]:
    """Every issue of ``data``; with ``agents`` (rows or names) agent references are checked too."""
    if isinstance(data, str):
        data = parse_text(data)
    if not isinstance(data, dict):
        return None, [Issue(None, None, "a plan must be a mapping with a `steps` list")]
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        return None, _shape_issues(exc, data)
    return plan, graph_issues(plan, agents)


def _shape_issues(exc: ValidationError, data: dict[str, Any]) -> list[Issue]:
    found = data.get("steps")
    raw_steps: list[Any] = found if isinstance(found, list) else []
    issues: list[Issue] = []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        step_name: str | None = None
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            raw = raw_steps[loc[1]] if loc[1] < len(raw_steps) else None
            raw_id = raw.get("id") if isinstance(raw, dict) else None
            step_name = raw_id if isinstance(raw_id, str) and raw_id else f"#{loc[1] + 1}"
            loc = loc[2:]
        field = ".".join(str(p) for p in loc) or None
        issues.append(Issue(step_name, field, _friendly(err, field)))
    return issues


def _friendly(err: Any, field: str | None) -> str:
    kind, value = err.get("type", ""), err.get("input")
    if field == "action" and kind == "literal_error":
        return f"unknown action {value!r}; expected one of: {', '.join(ACTIONS)}"
    if field == "id" and kind == "string_pattern_mismatch":
        return f"bad id {value!r}: use only lowercase letters, digits, '_' and '-'"
    if field == "id":
        return f"bad id {value!r}: {err.get('msg', 'invalid')}"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required"
    return str(err.get("msg", "invalid"))


def _path_problem(path: str) -> str | None:
    if not path:
        return "must not be empty"
    if "\x00" in path:
        return "must not contain NUL bytes"
    if path.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", path):
        return f"{path!r} is absolute; paths are relative to the orchestration's workspace"
    if ".." in re.split(r"[/\\]+", path):
        return f"{path!r} escapes the workspace ('..')"
    if "{{" in path:
        return "must not contain templates"
    return None


def _action_issues(step: Step) -> list[Issue]:
    issues: list[Issue] = []
    kind = step.kind
    if not kind:
        return [Issue(step.id, "action", "no action: name an `agent` (with a `prompt`) or set `action` to "
                                         "write_file or shell")]
    required = ACTION_FIELDS[kind]
    for name in sorted(required - {"content"}):
        value = getattr(step, name)
        if value is None or (isinstance(value, str | list) and not value):
            issues.append(Issue(step.id, name, f"required for a {kind} step"))
    if kind == "write_file" and step.content is None:
        issues.append(Issue(step.id, "content", "required for a write_file step (may be empty)"))
    for other in sorted(set().union(*ACTION_FIELDS.values()) - required):
        if getattr(step, other) is not None:
            issues.append(Issue(step.id, other, f"not allowed on a {kind} step"))
    if kind == "shell" and step.argv and not step.argv[0].strip():
        issues.append(Issue(step.id, "argv[0]", "the program must not be empty"))
    if kind == "write_file" and step.path is not None and (problem := _path_problem(step.path)):
        issues.append(Issue(step.id, "path", problem))
    if kind != "shell" and step.network is not None:
        issues.append(Issue(step.id, "network", f"not allowed on a {kind} step (only shell steps; "
                            "agent steps follow their agent's network setting)"))
    if kind == "write_file" and step.backend is not None:
        issues.append(Issue(step.id, "backend", "not allowed on a write_file step (it runs in the service)"))
    for name, text in step.templated_texts():
        if "\x00" in text:
            issues.append(Issue(step.id, name, "must not contain NUL bytes"))
        for match in REF_RE.finditer(text):
            if match.group(2) != "output":
                issues.append(Issue(step.id, name, f"unsupported template {match.group(0)!r}; only "
                                                   "{{ steps.<id>.output }} exists"))
    return issues


def graph_issues(plan: Plan, agents: list[dict[str, Any]] | list[str] | None = None) -> list[Issue]:
    issues: list[Issue] = []
    seen: set[str] = set()
    for step in plan.steps:
        if step.id in seen:
            issues.append(Issue(step.id, "id", "duplicate id"))
        seen.add(step.id)
    known_agents = None if agents is None else _agent_refs(agents)
    for step in plan.steps:
        issues += _action_issues(step)
        if known_agents is not None and step.agent is not None and step.agent not in known_agents:
            issues.append(Issue(step.id, "agent", f"unknown agent {step.agent!r}"))
        for dep in step.depends_on:
            if dep not in seen:
                issues.append(Issue(step.id, "depends_on", f"unknown step {dep!r}"))
        if len(set(step.depends_on)) != len(step.depends_on):
            issues.append(Issue(step.id, "depends_on", "lists a step twice"))
    if any(i.field in ("id", "depends_on") for i in issues):
        return issues  # the graph is ambiguous or incomplete; more findings would only confuse
    cycle = find_cycle(plan)
    if cycle:
        issues.append(Issue(cycle[0], "depends_on", "cycle: " + " → ".join([*cycle, cycle[0]])
                                                 + " (each step depends on the next)"))
        return issues
    ups = ancestors(plan)
    for step in plan.steps:
        for name, text in step.templated_texts():
            for match in REF_RE.finditer(text):
                ref = match.group(1)
                if ref not in seen:
                    issues.append(Issue(step.id, name, f"references steps.{ref}.output but there is no step {ref!r}"))
                elif ref not in ups[step.id]:
                    issues.append(Issue(step.id, name, f"references steps.{ref}.output but {ref!r} is not upstream "
                                                       f"of {step.id!r}; add it to depends_on"))
    return issues


def _agent_refs(agents: list[dict[str, Any]] | list[str]) -> set[str]:
    refs: set[str] = set()
    for agent in agents:
        if isinstance(agent, str):
            refs.add(agent)
        else:
            refs.update({agent["name"], agent["id"]})
    return refs


def edges(plan: Plan) -> dict[str, list[str]]:
    """step id → ids of the steps that depend on it (known steps only)."""
    children: dict[str, list[str]] = {s.id: [] for s in plan.steps}
    for step in plan.steps:
        for dep in step.depends_on:
            if dep in children:
                children[dep].append(step.id)
    return children


def _sorter(plan: Plan) -> TopologicalSorter[str]:
    """The plan as graphlib sees it: each step after the (known) steps it depends on."""
    known = {s.id for s in plan.steps}
    return TopologicalSorter({s.id: [d for d in s.depends_on if d in known] for s in plan.steps})


def find_cycle(plan: Plan) -> list[str] | None:
    """One cycle as a list of step ids, each depending on the next (the last on the first), or None.

    It starts at its member that comes first in the plan, so the message is the same every time."""
    try:
        _sorter(plan).prepare()
    except CycleError as exc:
        found: list[str] = list(reversed(exc.args[1][:-1]))  # graphlib lists each before what depends on it
        position = {s.id: i for i, s in enumerate(plan.steps)}
        start = min(range(len(found)), key=lambda i: position[found[i]])
        return found[start:] + found[:start]
    return None


def ancestors(plan: Plan) -> dict[str, set[str]]:
    """step id → every step it depends on, transitively (the plan must be acyclic)."""
    result: dict[str, set[str]] = {}
    for step_id in topological_order(plan):
        step = plan.step(step_id)
        ups: set[str] = set()
        for dep in step.depends_on:
            ups.add(dep)
            ups |= result[dep]
        result[step_id] = ups
    return result


def topological_order(plan: Plan) -> list[str]:
    """Every step after its dependencies (graphlib); among steps ready together, plan order
    first, so the output is predictable."""
    sorter = _sorter(plan)
    try:
        sorter.prepare()
    except CycleError as exc:
        raise ValueError("the plan has a cycle") from exc
    position = {s.id: i for i, s in enumerate(plan.steps)}
    ready = [(position[s], s) for s in sorter.get_ready()]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(node)
        sorter.done(node)
        for step_id in sorter.get_ready():
            heapq.heappush(ready, (position[step_id], step_id))
    return order


def layers(plan: Plan) -> list[list[str]]:
    """Steps grouped by depth (longest dependency chain above them): the DAG picture's rows."""
    depth: dict[str, int] = {}
    for step_id in topological_order(plan):
        depth[step_id] = 1 + max((depth[d] for d in plan.step(step_id).depends_on), default=-1)
    rows: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for step in plan.steps:
        rows[depth[step.id]].append(step.id)
    return rows


def heights(plan: Plan) -> dict[str, int]:
    """Longest chain of steps below each step (inclusive): run tall ones first when slots are scarce."""
    children = edges(plan)
    height: dict[str, int] = {}
    for step_id in reversed(topological_order(plan)):
        height[step_id] = 1 + max((height[c] for c in children[step_id]), default=0)
    return height


def render(text: str, outputs: dict[str, str]) -> str:
    """Substitute ``{{ steps.X.output }}`` by plain text replacement; nothing is evaluated."""
    return REF_RE.sub(lambda m: outputs.get(m.group(1), "") if m.group(2) == "output" else m.group(0), text)


def to_data(plan: Plan) -> dict[str, Any]:
    """The plan as plain data without defaults (what `agent-manager plan -o` writes)."""
    data: dict[str, Any] = plan.model_dump(mode="json", exclude_defaults=True)
    data.setdefault("name", plan.name)
    return {"name": data.pop("name"), **data}


def to_yaml(plan: Plan) -> str:
    return yaml.safe_dump(to_data(plan), sort_keys=False, allow_unicode=True, width=100)


def to_json(plan: Plan) -> str:
    return json.dumps(to_data(plan), indent=2, ensure_ascii=False)


class PlanInput(BaseModel):
    """A plan as data (``plan``) or as YAML/JSON text (``yaml``): exactly one of them."""

    model_config = ConfigDict(extra="forbid")

    plan: dict[str, Any] | None = None
    yaml: str | None = Field(None, max_length=5_000_000)

    def data(self) -> Any:
        if (self.plan is None) == (self.yaml is None):
            raise ValidationFailed("give exactly one of \"plan\" (an object) or \"yaml\" (text)",
                                   [{"field": "plan"}, {"field": "yaml"}])
        return self.plan if self.plan is not None else parse_text(self.yaml or "")
