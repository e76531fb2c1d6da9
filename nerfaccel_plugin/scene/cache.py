"""On-disk cache of generated scenes: ``$XDG_CACHE_HOME/nerfaccel/scenes/<name>`` (``~/.cache`` by default).

A scene is rendered into a private temporary folder next to its final place and moved there with one
``os.rename``, so a killed process leaves at most a stray temporary folder (removed later), never a
half-written scene under the final name. A folder counts as cached only if its manifest is there and
every listed file has the recorded SHA-256; anything else is moved aside and regenerated. A lock file
(``fcntl.flock``, where available) makes concurrent callers wait for one generator instead of
rendering the same scene twice; without it the rename still keeps the cache consistent (the loser of
the race uses the winner's copy).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from .writer import DEFAULT_RESOLUTION, DEFAULT_VIEWS, FORMAT_VERSION, SceneSpec, check_complete, generate_scene

try:  # POSIX only; elsewhere the atomic rename alone keeps the cache consistent
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


def cache_root() -> Path:
    """Folder holding the cached scenes: ``$XDG_CACHE_HOME/nerfaccel/scenes`` or ``~/.cache/nerfaccel/scenes``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nerfaccel" / "scenes"


def scene_name(spec: SceneSpec) -> str:
    """Cache folder name of a spec, e.g. ``bricks-static-160px-100v-seed0-f1``."""
    counts = spec.counts()
    name = f"bricks-{'dynamic' if spec.dynamic else 'static'}-{spec.resolution}px-{counts['train']}v"
    if counts != SceneSpec(views=spec.views).counts():
        name += f"-{counts['val']}val-{counts['test']}test"
    if spec.supersample != 1:
        name += f"-ss{spec.supersample}"
    return f"{name}-seed{spec.seed}-f{FORMAT_VERSION}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _user_tag() -> str:
    try:
        return str(os.getuid())
    except AttributeError:  # pragma: no cover - not on POSIX
        return os.environ.get("USERNAME", "user")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale(root: Path, name: str) -> None:
    """Deletes temporary folders left by processes that are gone (and earlier ones of ``name`` from this
    process, which holds the lock), and discarded copies."""
    for p in root.glob(".tmp-*"):
        try:
            pid = int(p.name.rsplit("-", 2)[1])
        except (ValueError, IndexError):
            continue
        mine = p.name.startswith(f".tmp-{name}-") and pid == os.getpid()
        if mine or not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(f".old-{name}-*"):
        shutil.rmtree(p, ignore_errors=True)


def ensure_scene(
    spec: SceneSpec,
    root: Path | None = None,
    announce: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Returns the cached folder of ``spec``, generating (or regenerating) it if needed.

    Args:
        spec: Scene to provide.
        root: Cache folder (default :func:`cache_root`).
        announce: Called with one line of text before generating.
        progress: Passed to :func:`~nerfaccel_plugin.scene.writer.generate_scene`.

    Returns:
        Path of the complete scene folder.
    """
    spec.validate()
    root = Path(root) if root is not None else cache_root()
    name = scene_name(spec)
    final = root / name
    if check_complete(final, spec):
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as err:  # read-only or broken cache location: fall back to the temp folder
        fallback = Path(tempfile.gettempdir()) / f"nerfaccel-scenes-{_user_tag()}"
        if announce is not None:
            announce(f"Cache folder {root} is not writable ({err.__class__.__name__}); using {fallback}")
        if fallback == root:
            raise
        return ensure_scene(spec, fallback, announce, progress)
    with _locked(root / f".{name}.lock"):
        if check_complete(final, spec):  # someone else finished it while we waited
            return final
        _remove_stale(root, name)
        if announce is not None:
            announce(f"Generating the embedded brick scene ({name}) in {final} ...")
        tmp = root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            generate_scene(tmp, spec, progress=progress)
            if check_complete(final, spec):  # another process (without a working lock) won the race
                return final
            if final.exists() or final.is_symlink():  # incomplete or corrupted copy: move it out of the way
                trash = root / f".old-{name}-{uuid.uuid4().hex[:8]}"
                with contextlib.suppress(OSError):
                    os.rename(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not check_complete(final, spec):  # not a lost race: a real failure
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if not check_complete(final, spec):
        raise RuntimeError(f"could not write a complete scene to {final}")
    return final


def get_scene(
    dynamic: bool = False,
    resolution: int | None = None,
    views: int | None = None,
    seed: int = 0,
) -> Path:
    """Returns the folder of the embedded brick scene, generating it into the cache on first use.

    The folder holds ``transforms_{train,val,test}.json`` and RGBA PNGs in the NeRF-synthetic layout
    (``dynamic=False``, read it with Nerfstudio's ``BlenderDataParserConfig(data=path)``) or the D-NeRF
    layout with per-frame ``time`` (``dynamic=True``, ``DNeRFDataParserConfig(data=path)``). Generating
    prints one line; the default size takes a few seconds on two CPU cores.

    Args:
        dynamic: D-NeRF variant with moving parts.
        resolution: Image width and height in pixels (default 160).
        views: Number of training views (default 100); val and test get ``max(1, views // 5)`` each.
        seed: Seed of the random camera positions.

    Returns:
        Path of the complete scene folder under :func:`cache_root`.
    """
    spec = SceneSpec(
        dynamic=bool(dynamic),
        resolution=int(resolution) if resolution is not None else DEFAULT_RESOLUTION,
        views=int(views) if views is not None else DEFAULT_VIEWS,
        seed=int(seed),
    )

    def announce(line: str) -> None:
        from rich.console import Console

        Console(stderr=True).print(line, highlight=False, soft_wrap=True)

    return ensure_scene(spec, announce=announce)
