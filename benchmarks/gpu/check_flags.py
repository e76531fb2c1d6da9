"""Checks a command line against a benchmark script's real argument parser without running the benchmark.

``gpu_check.sh`` calls this in each stage's setup (also in ``--dry-run``), so a flag the script does not know fails
the dry run instead of a GPU session: the script's module-level code runs (its imports too), then
``argparse.ArgumentParser.parse_args`` parses the given arguments and the run stops right there.

    python benchmarks/gpu/check_flags.py benchmarks/bench_backends.py --device cuda --layout geo30

Exit status 0 when the arguments parse, 1 when they do not (argparse's message is printed) or the script never
parses arguments. ``--require MODULE`` (before the script, repeatable) first imports MODULE and exits 2 with the
import error when it fails (``gpu_check.sh`` reports a stage whose setup exits 2 as skipped, with that reason).
"""

from __future__ import annotations

import argparse
import importlib
import runpy
import sys
from pathlib import Path


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


def check(script: Path, args: list[str]) -> tuple[bool, str]:
    """Runs ``script`` as ``__main__`` with ``args`` up to its ``parse_args``.

    Args:
        script: The benchmark script.
        args: Its command-line arguments.

    Returns:
        ``(ok, message)``: whether the arguments parsed, and the parsed namespace or argparse's error.
    """
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, a=None, namespace=None):  # noqa: ANN001 - argparse's signature
        raise _Parsed(original(self, a, namespace))

    old_argv = sys.argv
    argparse.ArgumentParser.parse_args = parse_args  # type: ignore[method-assign]
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.resolve().parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except _Parsed as done:
        return True, f"{script.name}: flags ok: {vars(done.namespace)}"
    except SystemExit as err:  # argparse's error (exit 2) or --help (exit 0)
        return False, f"{script.name}: the arguments {args} do not parse (exit {err.code}, message above)"
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
        sys.argv = old_argv
        sys.path.pop(0)
    return False, f"{script.name} returned without parsing arguments"


def main() -> int:
    argv = sys.argv[1:]
    while len(argv) >= 2 and argv[0] == "--require":
        try:
            importlib.import_module(argv[1])
        except Exception as err:  # noqa: BLE001 - any import failure is the reason to report
            print(f"{argv[1]} cannot be imported here: {type(err).__name__}: {err}")
            return 2
        argv = argv[2:]
    if not argv:
        print(__doc__)
        return 1
    ok, message = check(Path(argv[0]), argv[1:])
    print(message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
