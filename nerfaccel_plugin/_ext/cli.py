"""``nerfaccel-build``: compile the extensions ahead of time into the cache and report what was built.

Examples::

    nerfaccel-build                 # the CPU extension, plus CUDA when a toolkit is found
    nerfaccel-build --cpu           # only the CPU extension
    nerfaccel-build --cuda --arch "8.6;9.0"
    nerfaccel-build --cuda --arch 9.0 --import   # also import the built module (works without a GPU)
    nerfaccel-build --check         # verify the cached builds (size, SHA-256, import in a child process)
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nerfaccel-build", description="Prebuild nerfaccel's C++ (CPU) and CUDA extensions into the cache."
    )
    parser.add_argument("--cpu", action="store_true", help="build the CPU extension (system C++ compiler)")
    parser.add_argument("--cuda", action="store_true", help="build the CUDA extension (nvcc)")
    parser.add_argument("--arch", default=None, help="CUDA architectures, TORCH_CUDA_ARCH_LIST syntax (e.g. '8.6;9.0')")
    parser.add_argument("--force", action="store_true", help="rebuild even when a cached build exists")
    parser.add_argument(
        "--import", dest="do_import", action="store_true", help="import each built module to check it loads"
    )
    parser.add_argument("--quiet", action="store_true", help="no spinner")
    parser.add_argument(
        "--check",
        action="store_true",
        help="verify the cached builds (size and SHA-256 against COMPLETE, then an import in a child process); "
        "builds nothing; exit status 1 when a cached build is damaged",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nerfaccel-build``. Returns 0 when every requested extension built."""
    args = _parser().parse_args(argv)
    from . import ExtensionUnavailable, build

    kinds = [k for k, on in (("cpp", args.cpu), ("cuda", args.cuda)) if on]
    if args.arch:
        os.environ["TORCH_CUDA_ARCH_LIST"] = args.arch
    if args.check:
        return _check(kinds or ["cpp", "cuda"])
    if not kinds:
        kinds = ["cpp"]
        if build._toolchain_problem("cuda") is None:
            kinds.append("cuda")
    failed = 0
    print(f"nerfaccel-build: cache {build.cache_root()}")
    for kind in kinds:
        arch = build.cuda_arch_list() if kind == "cuda" else None
        start = time.monotonic()
        try:
            directory = build.compile_extension(kind, arch=arch, force=args.force, quiet=args.quiet)
        except ExtensionUnavailable as err:
            failed += 1
            print(f"  {kind:4s}: FAILED - {err.reason}")
            continue
        key = directory.name.split("-", 1)[1]
        path = build._built_file(directory, build.module_name(kind, key))
        line = f"  {kind:4s}: {path} ({time.monotonic() - start:.0f} s"
        line += f", sm {arch})" if arch else ")"
        if args.do_import:
            try:
                module = build._import_file(build.module_name(kind, key), path)
                line += f" imported, {len([n for n in dir(module) if not n.startswith('_')])} symbols"
            except ImportError as err:
                failed += 1
                line += f" IMPORT FAILED: {err}"
        print(line)
    return 1 if failed else 0


def _check(kinds: list[str]) -> int:
    """``--check``: reports each cached build as ok, not built, or damaged (and why). Returns 1 if one is damaged."""
    from . import build

    damaged = 0
    print(f"nerfaccel-build --check: cache {build.cache_root()}")
    for kind in kinds:
        key = build.jit_key(kind, arch=build.cuda_arch_list() if kind == "cuda" else None)
        directory, name = build.build_dir(kind, key), build.module_name(kind, key)
        path, why = build.check_cached(directory, name)
        if path is not None:
            why = build._probe_import(name, path, key=key)
        if path is None and why is None:
            failed = build._failed_marker(directory)
            state = "not built" + (" (an earlier build failed; see its build.log)" if failed is not None else "")
            print(f"  {kind:4s}: {state} ({directory})")
        elif why is None:
            print(f"  {kind:4s}: ok ({path})")
        else:
            damaged += 1
            print(f"  {kind:4s}: DAMAGED - {why}; `nerfaccel-build --{'cpu' if kind == 'cpp' else 'cuda'}` rebuilds it")
    return 1 if damaged else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
