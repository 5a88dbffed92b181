"""The service's code as a git work tree: prove a tag exists, check it out, and find the way back.

Brief §4: the file-mode fallback code may live at a tag (e.g. `emergency-file-fallback-v1`), and a
tag check must prove the tag exists with `git rev-parse --verify refs/tags/NAME` rather than list
tags. Everything here runs `git -C REPO ...` as a subprocess (never through a shell) with a
timeout, and turns git's failures into one-line :class:`InputError` messages.

Dirty tree policy (:func:`is_dirty`): only changes to *tracked* files count (staged, modified,
deleted, renamed, conflicted). Untracked files do not block a checkout; git itself refuses to
switch when one would be overwritten, and that refusal is reported as an :class:`InputError`.
With ``force=True`` the checkout runs `git checkout --force`, which discards local changes to
tracked files and overwrites untracked files in the way, so the work tree is exactly the target.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from resilience.errors import InputError, StackError

log = logging.getLogger(__name__)

TIMEOUT = 30.0
CHECKOUT_TIMEOUT = 120.0
SHOWN_PATHS = 5


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
    return env


def _run(repo: Path, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise StackError("git not found on PATH: install git") from None
    except subprocess.TimeoutExpired:
        raise InputError(f"git {args[0]} in {repo} did not finish within {timeout:.0f} s") from None


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def _repo(repo: str | Path) -> Path:
    """Check that ``repo`` is the top of a git work tree and return it as a Path."""
    path = Path(repo)
    if not path.is_dir():
        raise InputError(f"{path} is not a git repository (no such directory)")
    result = _run(path, "rev-parse", "--is-inside-work-tree")
    if result.returncode != 0 or result.stdout.strip() != "true":
        if "dubious ownership" in result.stderr:
            raise InputError(
                f"git refuses {path}: it is owned by another user "
                "(run as its owner, or add it to git's safe.directory)"
            )
        raise InputError(f"{path} is not a git repository")
    return path


def _check_tag_name(repo: Path, tag: str) -> None:
    if not tag or tag != tag.strip() or tag.startswith("-"):
        raise InputError(f"invalid tag name {tag!r}")
    result = _run(repo, "check-ref-format", f"refs/tags/{tag}")
    if result.returncode != 0:
        raise InputError(f"invalid tag name {tag!r}")


def _verify(repo: Path, refname: str) -> str | None:
    """The commit ``refname`` points to, or None when it does not exist."""
    result = _run(repo, "rev-parse", "--verify", "--quiet", f"{refname}^{{commit}}")
    if result.returncode == 0:
        return result.stdout.strip()
    if result.returncode == 1 and not result.stderr.strip():
        return None
    raise InputError(f"git rev-parse --verify {refname} failed in {repo}: {_last_line(result)}")


def tag_exists(repo: str | Path, tag: str) -> bool:
    """Whether ``refs/tags/<tag>`` exists in ``repo`` and points (maybe via an annotated tag)
    to a commit, proven by `git rev-parse --verify refs/tags/<tag>`."""
    path = _repo(repo)
    _check_tag_name(path, tag)
    return _verify(path, f"refs/tags/{tag}") is not None


def require_tag(repo: str | Path, tag: str) -> str:
    """The commit of ``tag``; :class:`InputError` naming the failed check when it does not exist."""
    path = _repo(repo)
    _check_tag_name(path, tag)
    commit = _verify(path, f"refs/tags/{tag}")
    if commit is None:
        raise InputError(_no_tag_message(tag, path))
    return commit


def _no_tag_message(tag: str, repo: Path) -> str:
    return f"tag {tag} does not exist in {repo} (git rev-parse --verify refs/tags/{tag} failed)"


def head_commit(repo: str | Path) -> str:
    """The full sha of the commit checked out in ``repo``."""
    path = _repo(repo)
    commit = _verify(path, "HEAD")
    if commit is None:
        raise InputError(f"{path} has no commit checked out")
    return commit


def current_ref(repo: str | Path) -> str:
    """The branch checked out in ``repo``, or the commit sha when HEAD is detached.

    The result is what :func:`checkout` accepts to come back here.
    """
    path = _repo(repo)
    result = _run(path, "symbolic-ref", "--quiet", "--short", "HEAD")
    if result.returncode == 0:
        return result.stdout.strip()
    if result.returncode == 1:
        return head_commit(path)
    raise InputError(f"cannot read HEAD of {path}: {_last_line(result)}")


def is_dirty(repo: str | Path) -> list[str]:
    """Paths of tracked files with uncommitted changes (staged or not); empty when clean.

    Untracked files are not listed (see the module docstring for why).
    """
    path = _repo(repo)
    result = _run(path, "status", "--porcelain=v1", "-z", "--untracked-files=no")
    if result.returncode != 0:
        raise InputError(f"git status failed in {path}: {_last_line(result)}")
    paths: list[str] = []
    fields = result.stdout.split("\0")
    index = 0
    while index < len(fields):
        entry = fields[index]
        index += 1
        if len(entry) < 4:
            continue
        status, name = entry[:2], entry[3:]
        paths.append(name)
        if "R" in status or "C" in status:
            index += 1  # the next field is the rename/copy source
    return paths


def _resolve_target(repo: Path, ref: str) -> tuple[str, str | None]:
    """(commit, branch) for ``ref``: a branch first (as git does), then a tag, then a commit."""
    if not ref or ref != ref.strip() or ref.startswith("-"):
        raise InputError(f"invalid git ref {ref!r}")
    if _run(repo, "check-ref-format", "--branch", ref).returncode == 0:
        commit = _verify(repo, f"refs/heads/{ref}")
        if commit is not None:
            return commit, ref
    if _run(repo, "check-ref-format", f"refs/tags/{ref}").returncode == 0:
        commit = _verify(repo, f"refs/tags/{ref}")
        if commit is not None:
            return commit, None
    if all(c in "0123456789abcdef" for c in ref.lower()) and 7 <= len(ref) <= 64:
        commit = _verify(repo, ref)
        if commit is not None:
            return commit, None
    raise InputError(_no_tag_message(ref, repo))


def checkout(repo: str | Path, ref: str, *, force: bool = False) -> str:
    """Check out ``ref`` in ``repo`` and return the ref that was checked out before.

    ``ref`` is a branch name (checked out as that branch), a tag (checked out as a detached
    HEAD at its commit) or a commit sha; a name that is both a branch and a tag means the branch,
    as in git. The returned ref (from :func:`current_ref`) is the way back:
    ``checkout(repo, previous)``.

    Refuses, changing nothing, when tracked files have uncommitted changes, unless ``force``
    (then local changes are discarded: `git checkout --force`). An unknown ref raises
    ``InputError("tag X does not exist in REPO (git rev-parse --verify refs/tags/X failed)")``.
    """
    path = _repo(repo)
    commit, branch = _resolve_target(path, ref)
    previous = current_ref(path)
    dirty = is_dirty(path)
    if dirty and not force:
        shown = ", ".join(dirty[:SHOWN_PATHS])
        more = f" (+{len(dirty) - SHOWN_PATHS} more)" if len(dirty) > SHOWN_PATHS else ""
        raise InputError(
            f"work tree {path} has uncommitted changes in {len(dirty)} file(s): {shown}{more}; "
            "commit or stash them, or force the checkout"
        )
    if dirty:
        log.warning("discarding local changes in %s to check out %s: %s", path, ref, dirty)
    args = ["checkout", "--quiet"]
    if force:
        args.append("--force")
    args += [branch, "--"] if branch is not None else ["--detach", commit]
    result = _run(path, *args, timeout=CHECKOUT_TIMEOUT)
    if result.returncode != 0:
        raise InputError(f"git checkout {ref} failed in {path}: {_last_line(result)}")
    now = head_commit(path)
    if now != commit:
        raise InputError(f"git checkout {ref} in {path} left HEAD at {now[:12]}, not {commit[:12]}")
    return previous
