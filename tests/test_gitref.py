"""The code step against a real git repository in a temp dir."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from resilience.errors import InputError
from resilience.service.gitref import (
    checkout,
    current_ref,
    head_commit,
    is_dirty,
    require_tag,
    tag_exists,
)

TAG = "emergency-file-fallback-v1"


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Drill",
        "GIT_AUTHOR_EMAIL": "drill@example.invalid",
        "GIT_COMMITTER_NAME": "Drill",
        "GIT_COMMITTER_EMAIL": "drill@example.invalid",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    result = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True
    )
    return result.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """main: v1 -> tag (annotated) on v2 -> v3; branch `other` at v1."""
    path = tmp_path / "service"
    path.mkdir()
    git(path, "init", "--quiet", "-b", "main")
    for version in ("v1", "v2", "v3"):
        (path / "index.js").write_text(f"// {version}\n")
        (path / "README").write_text(f"readme {version}\n")
        git(path, "add", "index.js", "README")
        git(path, "commit", "--quiet", "-m", version)
        if version == "v1":
            git(path, "branch", "other")
        if version == "v2":
            git(path, "tag", "-a", TAG, "-m", "file fallback")
    return path


def test_tag_exists_is_proven_by_rev_parse(repo: Path) -> None:
    assert tag_exists(repo, TAG)
    assert not tag_exists(repo, "no-such-tag")
    assert not tag_exists(repo, "main")  # a branch is not a tag
    assert require_tag(repo, TAG) == git(repo, "rev-parse", f"{TAG}^{{commit}}")


def test_unknown_tag_is_refused_with_the_rev_parse_message(repo: Path) -> None:
    before = head_commit(repo)
    with pytest.raises(InputError) as caught:
        checkout(repo, "no-such-tag")
    assert str(caught.value) == (
        f"tag no-such-tag does not exist in {repo} "
        "(git rev-parse --verify refs/tags/no-such-tag failed)"
    )
    assert head_commit(repo) == before
    with pytest.raises(InputError, match=r"git rev-parse --verify refs/tags/nope failed"):
        require_tag(repo, "nope")


def test_invalid_tag_names_are_refused(repo: Path) -> None:
    for bad in ("", "two words", "a..b", "--upload-pack=x"):
        with pytest.raises(InputError, match="invalid"):
            tag_exists(repo, bad)


def test_checkout_tag_returns_previous_ref_and_the_way_back_works(repo: Path) -> None:
    main_head = head_commit(repo)
    assert current_ref(repo) == "main"

    previous = checkout(repo, TAG)
    assert previous == "main"
    assert head_commit(repo) == git(repo, "rev-parse", f"{TAG}^{{commit}}")
    assert (repo / "index.js").read_text() == "// v2\n"
    detached = current_ref(repo)
    assert detached == head_commit(repo)  # detached HEAD: the sha

    back = checkout(repo, previous)
    assert back == detached
    assert current_ref(repo) == "main"
    assert head_commit(repo) == main_head
    assert (repo / "index.js").read_text() == "// v3\n"


def test_checkout_branch_and_back_to_a_detached_sha(repo: Path) -> None:
    checkout(repo, TAG)
    sha = current_ref(repo)
    previous = checkout(repo, "other")
    assert previous == sha
    assert current_ref(repo) == "other"
    checkout(repo, previous)
    assert current_ref(repo) == sha
    with pytest.raises(subprocess.CalledProcessError):
        git(repo, "symbolic-ref", "-q", "HEAD")  # still detached


def test_dirty_tree_is_refused_and_nothing_changes(repo: Path) -> None:
    (repo / "index.js").write_text("// local hotfix\n")
    (repo / "README").write_text("edited\n")
    (repo / "untracked.txt").write_text("not tracked\n")
    assert sorted(is_dirty(repo)) == ["README", "index.js"]

    with pytest.raises(InputError, match=r"uncommitted changes in 2 file\(s\): ") as caught:
        checkout(repo, TAG)
    assert "index.js" in str(caught.value) and "README" in str(caught.value)
    assert current_ref(repo) == "main"
    assert (repo / "index.js").read_text() == "// local hotfix\n"


def test_dirty_message_lists_at_most_five_paths(repo: Path) -> None:
    for number in range(7):
        (repo / f"f{number}.txt").write_text("x\n")
    git(repo, "add", ".")
    assert len(is_dirty(repo)) == 7
    with pytest.raises(InputError, match=r"7 file\(s\).*\(\+2 more\)") as caught:
        checkout(repo, TAG)
    assert sum(f"f{n}.txt" in str(caught.value) for n in range(7)) == 5


def test_force_discards_local_changes(repo: Path) -> None:
    (repo / "index.js").write_text("// local hotfix\n")
    previous = checkout(repo, TAG, force=True)
    assert previous == "main"
    assert (repo / "index.js").read_text() == "// v2\n"
    assert is_dirty(repo) == []


def test_untracked_files_do_not_block(repo: Path) -> None:
    (repo / "logs.txt").write_text("runtime output\n")
    assert is_dirty(repo) == []
    checkout(repo, TAG)
    assert (repo / "logs.txt").exists()


def test_untracked_file_in_the_way_is_refused_by_git(repo: Path) -> None:
    git(repo, "checkout", "--quiet", "other")
    (repo / "extra.js").write_text("// would be overwritten\n")
    git(repo, "checkout", "--quiet", "main")
    (repo / "extra.js").unlink()
    git(repo, "checkout", "--quiet", "-b", "feature")
    (repo / "extra.js").write_text("// tracked on feature\n")
    git(repo, "add", "extra.js")
    git(repo, "commit", "--quiet", "-m", "extra")
    git(repo, "checkout", "--quiet", "main")
    (repo / "extra.js").write_text("// untracked local copy\n")

    with pytest.raises(InputError, match="git checkout feature failed"):
        checkout(repo, "feature")
    assert current_ref(repo) == "main"
    assert (repo / "extra.js").read_text() == "// untracked local copy\n"


def test_renames_are_listed_once(repo: Path) -> None:
    git(repo, "mv", "README", "README.md")
    assert is_dirty(repo) == ["README.md"]


def test_not_a_git_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(InputError, match="is not a git repository"):
        tag_exists(plain, TAG)
    with pytest.raises(InputError, match="is not a git repository"):
        checkout(tmp_path / "missing", TAG)
    with pytest.raises(InputError, match="is not a git repository"):
        current_ref(plain)


def test_checkout_by_sha(repo: Path) -> None:
    first = git(repo, "rev-list", "--max-parents=0", "HEAD")
    assert checkout(repo, first[:12]) == "main"
    assert head_commit(repo) == first
