"""Credentials that must not reach other users through list answers (issue 13's response models)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from agent_manager.service import Service
from agent_manager.workspaces.projects import shown_url


def test_shown_url_masks_every_form_of_https_credentials() -> None:
    assert shown_url("https://alice:ghp_abc123@github.com/o/r.git") == "https://********@github.com/o/r.git"
    assert shown_url("https://ghp_abc123@github.com/o/r.git") == "https://********@github.com/o/r.git"
    assert shown_url("https://github.com/o/r.git") == "https://github.com/o/r.git"
    assert shown_url("https://github.com/o/r@v1.git") == "https://github.com/o/r@v1.git"  # an @ in the path
    assert shown_url("git@github.com:o/r.git") == "git@github.com:o/r.git"
    assert shown_url(None) is None


async def test_a_project_urls_token_is_not_shown_to_other_users(
        client: httpx.AsyncClient, service: Service, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for argv in (["init", "-q", "-b", "main"], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q",
                                                "--allow-empty", "-m", "first"]):
        subprocess.run(["git", *argv], cwd=repo, check=True)
    created = await client.post("/api/projects", json={"name": "private", "git_url": f"file://{repo}"})
    assert created.status_code == 201, created.text
    secret = "ghp_0123456789abcdefSECRET"
    with service.database.transaction() as conn:  # as a clone of a private https repository stores it
        conn.execute("UPDATE projects SET git_url = ? WHERE name = 'private'",
                     (f"https://deploy:{secret}@git.example.com/org/private.git",))
    token = (await client.post("/api/users", json={"name": "other"})).json()["token"]
    user = {"Authorization": f"Bearer {token}"}
    listed = await client.get("/api/projects", headers=user)
    one = await client.get("/api/projects/private", headers=user)
    assert listed.status_code == one.status_code == 200
    assert one.json()["git_url"] == "https://********@git.example.com/org/private.git"
    assert secret not in listed.text + one.text + (await client.get("/api/projects")).text
