"""vsd.records.git_info: the code a process runs is labelled by the commit it started from."""

from __future__ import annotations

import subprocess
from pathlib import Path

from vsd.records import git_info


def _git(root: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True, env=env)
    return out.stdout.strip()


def test_git_info_is_read_once_per_process(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("1")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-qm", "one")
    first = _git(tmp_path, "rev-parse", "HEAD")
    assert git_info(tmp_path) == {"git_sha": first, "git_dirty": False}
    # a commit made while a multirun is going must not relabel its later jobs (their code was imported before)
    (tmp_path / "a.txt").write_text("2")
    _git(tmp_path, "commit", "-qam", "two")
    assert _git(tmp_path, "rev-parse", "HEAD") != first
    assert git_info(tmp_path)["git_sha"] == first


def test_code_digest_follows_the_code_not_git(tmp_path: Path) -> None:
    from vsd.records import code_digest

    (tmp_path / "vsd" / "sub").mkdir(parents=True)
    (tmp_path / "conf").mkdir()
    (tmp_path / "vsd" / "sub" / "m.py").write_text("x = 1\n")
    (tmp_path / "conf" / "c.yaml").write_text("a: 1\n")
    (tmp_path / "run.py").write_text("print()\n")
    (tmp_path / "notes.txt").write_text("ignored")
    first = code_digest(tmp_path)
    code_digest.cache_clear()
    (tmp_path / "notes.txt").write_text("changed: not code")
    assert code_digest(tmp_path) == first
    code_digest.cache_clear()
    (tmp_path / "conf" / "c.yaml").write_text("a: 2\n")
    assert code_digest(tmp_path) != first
