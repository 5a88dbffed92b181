"""Images of the docker backend: the official ones where a registry answers, else equivalents
built here once and cached in the engine (RESILIENCE_DOCKER_IMAGES = auto | official | local).

Local images: a Debian bookworm base from `debootstrap --variant=minbase` (imported), and on it
PostgreSQL 15 (`docker/postgres.Dockerfile`), Toxiproxy from the binary `./run` builds
(`docker/toxiproxy.Dockerfile`) and moto at the pinned version (`docker/moto.Dockerfile`).
Each is built under a temporary tag and tagged only when complete; a failing build names its
failing step.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from resilience.drill.stack.engine import _mounts_under, docker_sdk
from resilience.errors import StackError

ROOT = Path(__file__).resolve().parents[3]
DOCKER_DIR = ROOT / "docker"
TOXIPROXY_VERSION = "2.12.0"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
ROLES = ("postgres", "toxiproxy", "moto")


def moto_version() -> str:
    return importlib.metadata.version("moto")


def official_images() -> dict[str, str]:
    return {
        "postgres": "postgres:15",
        "toxiproxy": f"ghcr.io/shopify/toxiproxy:{TOXIPROXY_VERSION}",
        "moto": f"motoserver/moto:{moto_version()}",
    }


BASE_IMAGE = "baileys-resilience/debian:bookworm"


def local_images() -> dict[str, str]:
    return {
        "postgres": "baileys-resilience/postgres:15",
        "toxiproxy": f"baileys-resilience/toxiproxy:{TOXIPROXY_VERSION}",
        "moto": f"baileys-resilience/moto:{moto_version()}",
    }


def apt_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses for bookworm (sources.list and sources.list.d), else
    deb.debian.org."""
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in files:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in path.read_text().split("\n\n"):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ")):
                        key, value = line.split(":", 1)
                        fields[key.strip().lower()] = value.strip()
                if (
                    "deb" in fields.get("types", "").split()
                    and SUITE in fields.get("suites", "").split()
                ):
                    uris = fields.get("uris", "").split()
                    if uris:
                        return uris[0]
    return DEFAULT_MIRROR


def has_image(client: Any, ref: str) -> bool:
    errors = docker_sdk("docker.errors")

    try:
        client.images.get(ref)
    except errors.ImageNotFound:
        return False
    return True


def image_id(client: Any, ref: str) -> str:
    return str(client.images.get(ref).id)


def _pull(client: Any, ref: str) -> str | None:
    """None when pulled, else the engine's refusal (one line)."""
    repo, _, tag = ref.rpartition(":")
    try:
        client.images.pull(repo, tag=tag)
    except Exception as exc:  # the engine's refusal (APIError) or the request timing out
        text = str(getattr(exc, "explanation", None) or exc) or type(exc).__name__
        return text.splitlines()[0][:200]
    return None


def ensure_images(
    client: Any,
    mode: str,
    tools_dir: Path,
    progress: Callable[[str], None] | None = None,
    connect: Callable[[], Any] | None = None,
) -> dict[str, str]:
    """role -> image reference, present in the engine (pulled or built as `mode` says).
    With `connect` (a new client of the same engine), the builds after the base run side by
    side: they wait mostly on the package mirror."""
    say = progress or (lambda _msg: None)
    official, local = official_images(), local_images()
    chosen: dict[str, str] = {}
    for role in ROLES:
        if mode == "local":
            chosen[role] = local[role]
            continue
        if has_image(client, official[role]):
            chosen[role] = official[role]
            continue
        if mode == "auto" and has_image(client, local[role]):
            chosen[role] = local[role]  # built here before: the registry refused then
            continue
        say(f"pulling {official[role]} ...")
        refusal = _pull(client, official[role])
        if refusal is None:
            chosen[role] = official[role]
        elif mode == "official":
            raise StackError(
                f"docker backend: cannot pull {official[role]} ({refusal}): "
                "set RESILIENCE_DOCKER_IMAGES=local (or auto) to build it here"
            )
        else:
            chosen[role] = local[role]
    missing = [role for role in ROLES if chosen[role] == local[role]]
    missing = [role for role in missing if not has_image(client, local[role])]
    if missing:
        builder = Builder(client, tools_dir, say)
        if not has_image(client, BASE_IMAGE):
            builder.base()
        if connect is None or len(missing) == 1:
            for role in missing:
                builder.build(role)
        else:
            _build_side_by_side(missing, connect, tools_dir, say)
    return chosen


def _build_side_by_side(
    roles: list[str], connect: Callable[[], Any], tools_dir: Path, say: Callable[[str], None]
) -> None:
    def one(role: str) -> str:
        own = connect()
        try:
            return Builder(own, tools_dir, say).build(role)
        finally:
            own.close()

    with ThreadPoolExecutor(max_workers=len(roles)) as pool:
        futures = [pool.submit(one, role) for role in roles]
        failures = [f.exception() for f in futures if f.exception() is not None]
    if failures:
        raise failures[0]  # type: ignore[misc]


class Builder:
    """Builds the local images (and their base) in the engine, each once."""

    def __init__(self, client: Any, tools_dir: Path, say: Callable[[str], None]) -> None:
        self.client = client
        self.tools = tools_dir.resolve()
        self.work = self.tools / "docker" / "build"
        self.say = say

    def build(self, role: str) -> str:
        if not has_image(self.client, BASE_IMAGE):
            self.base()
        ref = local_images()[role]
        self.work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.work, prefix=f"{role}-") as tmp:
            context = Path(tmp)
            args: dict[str, str] = {}
            if role == "postgres":
                _copy(DOCKER_DIR / "postgres-entrypoint.sh", context, "docker")
            elif role == "toxiproxy":
                binary = self.tools / "bin" / "toxiproxy-server"
                if not binary.exists():
                    raise StackError(
                        f"building {ref} needs {binary}: run './run' to build toxiproxy-server"
                    )
                _copy(binary, context, ".tools/bin")
            else:
                args["MOTO_VERSION"] = moto_version()
                self._download_moto(context / "wheels")
            shutil.copy2(DOCKER_DIR / f"{role}.Dockerfile", context / "Dockerfile")
            self.say(f"building {ref} (docker/{role}.Dockerfile) ...")
            self._docker_build(context, ref, args)
        return ref

    def _download_moto(self, dest: Path) -> None:
        argv = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check"]
        argv += ["-d", str(dest), "-c", str(ROOT / "constraints.txt")]
        argv += ["--only-binary=:all:", f"moto[server]=={moto_version()}"]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["?"])[-1][:200]
            raise StackError(f"building the moto image: pip download failed: {last}")

    def _docker_build(self, context: Path, ref: str, buildargs: dict[str, str]) -> None:
        repo, _, tag = ref.rpartition(":")
        temp = f"{repo}:building-{secrets.token_hex(4)}"
        step, error = "", ""
        try:
            stream = self.client.api.build(
                path=str(context),
                tag=temp,
                rm=True,
                forcerm=True,
                pull=False,
                network_mode="host",
                buildargs=buildargs,
                decode=True,
            )
            log: list[str] = []
            for chunk in stream:
                text = str(chunk.get("stream", ""))
                for line in text.splitlines():
                    if line.startswith("Step "):
                        step = line.strip()
                    elif line.strip():
                        log.append(line.strip())
                if "error" in chunk:
                    error = str(chunk["error"]).strip().splitlines()[-1]
            if error:
                detail = log[-1] if log else ""
                raise StackError(
                    f"building {ref} failed at {step or 'the start'}: {error[:200]}"
                    + (f" (last output: {detail[:160]})" if detail and detail not in error else "")
                )
            self.client.api.tag(temp, repo, tag)
        finally:
            _untag(self.client, temp)

    def base(self) -> None:
        """`debootstrap --variant=minbase bookworm` from apt's mirror, imported as BASE_IMAGE."""
        debootstrap = shutil.which("debootstrap", path="/usr/sbin:/usr/bin:/sbin:/bin")
        if debootstrap is None:
            raise StackError(
                "building the local images needs debootstrap: run './run' as root (it installs "
                "it) or 'apt-get install debootstrap'"
            )
        mirror = apt_mirror()
        self.work.mkdir(parents=True, exist_ok=True)
        rootfs = Path(tempfile.mkdtemp(dir=self.work, prefix="rootfs-"))
        repo, _, tag = BASE_IMAGE.rpartition(":")
        temp_tag = f"building-{secrets.token_hex(4)}"
        self.say(f"making the base image: debootstrap --variant=minbase {SUITE} ({mirror}) ...")
        try:
            argv = [debootstrap, "--variant=minbase", SUITE, str(rootfs), mirror]
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                out = (result.stderr or result.stdout).strip().splitlines() or ["?"]
                raise StackError(f"debootstrap of the base image failed: {out[-1][:200]}")
            for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (rootfs / sub).glob("*.deb" if "archives" in sub else "*_*"):
                    item.unlink(missing_ok=True)
            tar = subprocess.Popen(
                ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert tar.stdout is not None
            try:
                answer = self.client.api.import_image_from_stream(
                    tar.stdout, repository=repo, tag=temp_tag, changes=['CMD ["bash"]']
                )
            finally:
                tar.stdout.close()
                code = tar.wait()
            if code != 0:
                raise StackError(f"docker import of the base image: tar exited with {code}")
            if not has_image(self.client, f"{repo}:{temp_tag}"):
                shown = " ".join(str(answer).split())[-200:]
                raise StackError(f"docker import of the base image failed: {shown}")
            self.client.api.tag(f"{repo}:{temp_tag}", repo, tag)
        finally:
            _untag(self.client, f"{repo}:{temp_tag}")
            _unmount_under(rootfs)
            shutil.rmtree(rootfs, ignore_errors=True)


def _copy(source: Path, context: Path, under: str) -> None:
    dest = context / under
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, dest / source.name)


def _untag(client: Any, ref: str) -> None:
    with contextlib.suppress(Exception):  # absent (a failed build) or already gone
        client.api.remove_image(ref, noprune=False)


def _unmount_under(root: Path) -> None:
    """debootstrap mounts /proc and /sys in the target; a failed run may leave them."""
    for mount in reversed(sorted(_mounts_under(root))):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
