"""Plan format and validation: hand-written cases plus property-based DAGs (hypothesis)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_manager.orchestration import plan as plans
from agent_manager.orchestration.planner import candidates, extract

AGENTS = [{"id": "ag_1", "name": "gemini"}, {"id": "ag_2", "name": "claude"}]
DOCS = Path(__file__).parent.parent / "docs" / "plans.md"


def issues_of(data: Any) -> list[plans.Issue]:
    return plans.check(data, AGENTS)[1]


def test_design_example_is_valid() -> None:
    text = """
name: poem
max_parallel: 4
steps:
  - id: write
    agent: gemini
    prompt: "Write a poem about Rust"
  - id: critique
    agent: claude
    prompt: "Critique this poem:\\n{{ steps.write.output }}"
    depends_on: [write]
    retries: 1
  - id: save
    action: write_file
    path: poem.txt
    content: "{{ steps.write.output }}"
    depends_on: [write]
"""
    plan = plans.load(text, AGENTS)
    assert plan.step("critique").kind == "agent"
    assert plans.layers(plan) == [["write"], ["critique", "save"]]
    assert plans.to_data(plans.load(plans.to_yaml(plan), AGENTS)) == plans.to_data(plan)


@pytest.mark.parametrize("step, field, needle", [
    ({"id": "a", "agent": "gemini"}, "prompt", "required for a agent step"),
    ({"id": "a", "action": "teleport"}, "action", "unknown action 'teleport'"),
    ({"id": "a", "prompt": "hi"}, "action", "no action"),
    ({"id": "a", "action": "shell", "argv": []}, "argv", "required"),
    ({"id": "a", "action": "shell", "argv": "ls -la"}, "argv", "list"),
    ({"id": "a", "action": "write_file", "path": "/etc/passwd", "content": ""}, "path", "absolute"),
    ({"id": "a", "action": "write_file", "path": "x/../../y", "content": ""}, "path", "escapes"),
    ({"id": "a", "action": "write_file", "path": "x\x00y", "content": ""}, "path", "NUL"),
    ({"id": "a", "action": "write_file", "path": "x"}, "content", "required"),
    ({"id": "a", "agent": "ghost", "prompt": "hi"}, "agent", "unknown agent 'ghost'"),
    ({"id": "a", "agent": "gemini", "prompt": "hi", "path": "x"}, "path", "not allowed"),
    ({"id": "Not OK", "agent": "gemini", "prompt": "hi"}, "id", "bad id"),
    ({"id": "a", "agent": "gemini", "prompt": "hi", "colour": "red"}, "colour", "unknown field"),
    ({"id": "a", "agent": "gemini", "prompt": "{{ steps.a.result }}"}, "prompt", "unsupported template"),
    ({"id": "a", "agent": "gemini", "prompt": "x", "retries": 99}, "retries", "less than or equal"),
])
def test_single_step_problems_name_the_step(step: dict[str, Any], field: str, needle: str) -> None:
    found = issues_of({"steps": [step]})
    assert found, step
    assert any(i.step == step["id"] and i.field == field and needle in i.text() for i in found), found


def test_graph_problems() -> None:
    ok = {"agent": "gemini", "prompt": "p"}
    found = issues_of({"steps": [{"id": "a", **ok}, {"id": "a", **ok}]})
    assert [(i.step, i.message) for i in found] == [("a", "duplicate id")]
    found = issues_of({"steps": [{"id": "a", **ok, "depends_on": ["nope"]}]})
    assert found[0].text() == "step 'a': depends_on: unknown step 'nope'"
    found = issues_of({"steps": [{"id": "a", **ok, "depends_on": ["c"]}, {"id": "b", **ok, "depends_on": ["a"]},
                                 {"id": "c", **ok, "depends_on": ["b"]}, {"id": "d", **ok}]})
    assert len(found) == 1 and "cycle: a → c → b → a" in found[0].text()
    found = issues_of({"steps": [{"id": "x", **ok}, {"id": "c", **ok, "depends_on": ["x", "b"]},
                                 {"id": "b", **ok, "depends_on": ["c"]}]})
    assert [i.text() for i in found] == ["step 'c': depends_on: cycle: c → b → c (each step depends on the next)"]
    found = issues_of({"steps": [{"id": "s", **ok, "depends_on": ["s"]}]})
    assert [(i.step, i.message) for i in found] == [("s", "cycle: s → s (each step depends on the next)")]
    found = issues_of({"steps": [{"id": "a", **ok}, {"id": "b", "agent": "gemini", "prompt": "{{steps.a.output}}"}]})
    assert found[0].step == "b" and "'a' is not upstream of 'b'" in found[0].text()
    found = issues_of({"steps": [{"id": "a", "agent": "gemini", "prompt": "{{ steps.zz.output }}"}]})
    assert "no step 'zz'" in found[0].text()


def test_transitive_reference_is_upstream_and_shell_argv_is_templated() -> None:
    data = {"steps": [{"id": "a", "agent": "gemini", "prompt": "p"},
                      {"id": "b", "action": "shell", "argv": ["echo", "{{ steps.a.output }}"], "depends_on": "a"},
                      {"id": "c", "action": "write_file", "path": "out/c.txt", "depends_on": ["b"],
                       "content": "{{ steps.a.output }} and {{ steps.b.output }}"}]}
    plan = plans.load(data, AGENTS)
    assert plan.step("b").depends_on == ["a"]
    assert plans.render(plan.step("c").content or "", {"a": "A", "b": "{{ steps.a.output }}"}) == \
        "A and {{ steps.a.output }}"  # plain substitution: an output is never re-expanded


def test_not_a_mapping_and_bad_yaml() -> None:
    assert "mapping" in issues_of([1, 2])[0].text()
    with pytest.raises(plans.PlanInvalid) as caught:
        plans.load("steps: [\n  - id: a\n", AGENTS)
    assert "line" in caught.value.message and caught.value.status == 422


def test_schema_is_valid_json_schema_and_accepts_the_example() -> None:
    schema = plans.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate({"name": "x", "steps": [{"id": "a", "agent": "g", "prompt": "p"}]}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"steps": [{"id": "a", "action": "teleport"}]}, schema)


def test_docs_example_validates() -> None:
    """docs/plans.md is tested: its first ```yaml block is a valid plan."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    assert blocks, "docs/plans.md has no yaml example"
    plan = plans.load(blocks[0], [{"id": "x", "name": "gemini"}, {"id": "y", "name": "claude"}])
    assert {s.kind for s in plan.steps} == {"agent", "write_file", "shell"}
    for block in blocks[1:]:
        data = yaml.safe_load(block)
        if isinstance(data, dict) and "steps" in data:
            plans.load(data, [{"id": "x", "name": "gemini"}, {"id": "y", "name": "claude"}])


# -- planner answer extraction ----------------------------------------------------------

PLAN_YAML = "name: x\nsteps:\n  - id: a\n    agent: gemini\n    prompt: hi\n"


@pytest.mark.parametrize("raw", [
    PLAN_YAML,
    f"Here you go:\n\n```yaml\n{PLAN_YAML}```\nAnything else?",
    f"Plan:\n{PLAN_YAML}\nHope this helps: good luck",
    '{"response": "Sure:\\n```json\\n{\\"name\\": \\"x\\", \\"steps\\": [{\\"id\\": \\"a\\", \\"agent\\": '
    '\\"gemini\\", \\"prompt\\": \\"hi\\"}]}\\n```"}',
    'The plan is {"name": "x", "steps": [{"id": "a", "agent": "gemini", "prompt": "hi"}]} as requested.',
    '{"plan": {"name": "x", "steps": [{"id": "a", "agent": "gemini", "prompt": "hi"}]}}',
])
def test_extract_finds_wrapped_plans(raw: str) -> None:
    data = extract(raw)
    assert data == {"name": "x", "steps": [{"id": "a", "agent": "gemini", "prompt": "hi"}]}, candidates(raw)


def test_extract_none_for_prose() -> None:
    assert extract("I could not come up with a plan, sorry.") is None


# -- property-based: random DAGs --------------------------------------------------------

ids_st = st.lists(st.from_regex(r"[a-z0-9_-]{1,8}", fullmatch=True), min_size=1, max_size=25, unique=True)


@st.composite
def dags(draw: st.DrawFn) -> dict[str, Any]:
    """A random valid plan: deps only on earlier steps (then shuffled), references only upstream."""
    ids = draw(ids_st)
    steps: list[dict[str, Any]] = []
    ups: dict[str, set[str]] = {}
    for index, step_id in enumerate(ids):
        deps = draw(st.lists(st.sampled_from(ids[:index]), unique=True, max_size=4)) if index else []
        ups[step_id] = set(deps).union(*(ups[d] for d in deps)) if deps else set()
        refs = draw(st.lists(st.sampled_from(sorted(ups[step_id])), max_size=2)) if ups[step_id] else []
        text = "do it " + " ".join(f"{{{{ steps.{r}.output }}}}" for r in refs)
        kind = draw(st.sampled_from(["agent", "write_file", "shell"]))
        step: dict[str, Any] = {"id": step_id, "depends_on": deps}
        if kind == "agent":
            step |= {"agent": draw(st.sampled_from(["gemini", "claude", "ag_1"])), "prompt": text}
        elif kind == "write_file":
            step |= {"action": "write_file", "path": f"out/{step_id}.txt", "content": text}
        else:
            step |= {"action": "shell", "argv": ["echo", text]}
        steps.append(step)
    order = draw(st.permutations(range(len(steps))))
    return {"name": "random", "steps": [steps[i] for i in order]}


@given(dags())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_random_valid_dags_are_accepted_and_ordered(data: dict[str, Any]) -> None:
    plan, found = plans.check(data, AGENTS)
    assert plan is not None and found == []
    order = plans.topological_order(plan)
    assert sorted(order) == sorted(s.id for s in plan.steps)
    position = {s: i for i, s in enumerate(order)}
    depth = {s: i for i, row in enumerate(plans.layers(plan)) for s in row}
    ancestors = plans.ancestors(plan)
    heights = plans.heights(plan)
    for step in plan.steps:
        for dep in step.depends_on:
            assert position[dep] < position[step.id]
            assert depth[dep] < depth[step.id]
            assert heights[dep] > heights[step.id]
            assert dep in ancestors[step.id] and ancestors[dep] <= ancestors[step.id]
        assert set(step.references()) <= ancestors[step.id]
        assert step.id not in ancestors[step.id]


BREAKAGES = ["duplicate", "bad_id", "unknown_dep", "cycle", "not_upstream", "unknown_agent", "unknown_action",
             "path_escape"]


@st.composite
def broken(draw: st.DrawFn) -> tuple[str, dict[str, Any], set[str]]:
    """(kind, plan, ids one of which must be named) for one breakage applied to a random DAG."""
    data = draw(dags())
    steps = data["steps"]
    plan = plans.load(data, AGENTS)
    ancestors = plans.ancestors(plan)
    kind = draw(st.sampled_from(BREAKAGES))
    target = draw(st.sampled_from(steps))
    if kind == "duplicate":
        if len(steps) < 2:
            steps.append(dict(target))
        else:
            other = draw(st.sampled_from([s for s in steps if s is not target]))
            for step in steps:  # the renamed step's dependants would otherwise point at a renamed id
                step["depends_on"] = [target["id"] if d == other["id"] else d for d in step["depends_on"]]
            other["id"] = target["id"]
            for step in steps:
                for field in ("prompt", "content"):
                    if field in step:
                        step[field] = "no refs"
                if "argv" in step:
                    step["argv"] = ["true"]
        return kind, data, {target["id"]}
    if kind == "bad_id":
        target["id"] = draw(st.sampled_from(["Upper", "has space", "dot.ted", "", "x" * 65, "ünï"]))
        return kind, data, {target["id"] or "#"}
    if kind == "unknown_dep":
        target["depends_on"] = [*target["depends_on"], "no-such-step-" + target["id"]]
        return kind, data, {target["id"]}
    if kind == "cycle":
        candidates_ = [s for s in steps if ancestors[s["id"]]]
        if not candidates_:  # no edge yet: a self-dependency is the smallest cycle
            target["depends_on"] = [*target["depends_on"], target["id"]]
            return kind, data, {target["id"]}
        low = draw(st.sampled_from(candidates_))
        high_id = draw(st.sampled_from(sorted(ancestors[low["id"]])))
        high = next(s for s in steps if s["id"] == high_id)
        high["depends_on"] = [*high["depends_on"], low["id"]]
        cycle_members = {low["id"], high_id} | {s for s in ancestors[low["id"]] if high_id in ancestors[s]}
        return kind, data, cycle_members
    if kind == "not_upstream":
        outsiders = sorted({s["id"] for s in steps} - ancestors[target["id"]])  # includes itself
        ref = draw(st.sampled_from(outsiders))
        text = f"uses {{{{ steps.{ref}.output }}}}"
        if "prompt" in target:
            target["prompt"] += text
        elif "content" in target:
            target["content"] += text
        else:
            target["argv"] = [*target["argv"], text]
        return kind, data, {target["id"]}
    if kind == "unknown_agent":
        for key in ("action", "path", "content", "argv"):
            target.pop(key, None)
        target |= {"agent": "ghost-agent", "prompt": "hi"}
        return kind, data, {target["id"]}
    if kind == "unknown_action":
        target["action"] = draw(st.sampled_from(["teleport", "bash", "Agent", "write-file", ""]))
        return kind, data, {target["id"]}
    for key in ("action", "agent", "prompt", "argv"):
        target.pop(key, None)
    target |= {"action": "write_file", "content": "x",
               "path": draw(st.sampled_from(["/etc/passwd", "../up", "a/../../b", "a/\x00b", "~/x", "..\\win"]))}
    return kind, data, {target["id"]}


EXPECTED = {"duplicate": "duplicate id", "bad_id": "bad id", "unknown_dep": "unknown step", "cycle": "cycle",
            "not_upstream": "steps.", "unknown_agent": "unknown agent", "unknown_action": "unknown action",
            "path_escape": "path"}


@given(broken())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_broken_plans_are_rejected_naming_the_step(case: tuple[str, dict[str, Any], set[str]]) -> None:
    kind, data, named = case
    plan, found = plans.check(data, AGENTS)
    assert found, (kind, data)
    relevant = [i for i in found if EXPECTED[kind] in i.text()]
    assert relevant, (kind, [i.text() for i in found])
    if kind == "bad_id":
        assert any(i.field == "id" for i in relevant)
    else:
        assert any(i.step in named for i in relevant), (kind, named, [i.text() for i in found])
    with pytest.raises(plans.PlanInvalid) as caught:
        plans.load(data, AGENTS)
    assert caught.value.status == 422 and caught.value.details


def test_step_lookup_by_id_in_a_large_plan() -> None:
    steps = [{"id": f"s{i}", "action": "shell", "argv": ["true"], "depends_on": [f"s{i - 1}"] if i else []}
             for i in range(2000)]
    plan = plans.Plan.model_validate({"name": "big", "steps": steps})
    for i in (0, 1, 999, 1999):
        assert plan.step(f"s{i}") is plan.steps[i]
    with pytest.raises(KeyError):
        plan.step("s2000")
    dup = plans.Plan.model_construct(name="dup", steps=[plan.steps[0], plan.steps[0].model_copy(), plan.steps[1]])
    assert dup.step("s0") is dup.steps[0]  # the first of a duplicate id, as a scan finds it


def test_step_lookup_follows_a_copy_with_new_steps() -> None:
    plan = plans.Plan.model_validate({"name": "p", "steps": [{"id": "a", "action": "shell", "argv": ["true"]}]})
    assert plan.step("a").argv == ["true"]
    other = plan.model_copy(update={"steps": [plan.steps[0].model_copy(update={"argv": ["false"]})]})
    assert other.step("a").argv == ["false"] and plan.step("a").argv == ["true"]
