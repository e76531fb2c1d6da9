"""``nerfaccel-build``: compile the extensions ahead of time into the cache and report what was built.

Examples::

    nerfaccel-build                 # the CPU extension, plus CUDA when a toolkit is found
    nerfaccel-build --cpu           # only the CPU extension
    nerfaccel-build --cuda --arch "8.6;9.0"
    nerfaccel-build --cuda --arch 9.0 --import   # also import the built module (works without a GPU)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nerfaccel-build``. Returns 0 when every requested extension built."""
    args = _parser().parse_args(argv)
    from . import ExtensionUnavailable, build

    kinds = [k for k, on in (("cpp", args.cpu), ("cuda", args.cuda)) if on]
    if not kinds:
        kinds = ["cpp"]
        if build._toolchain_problem("cuda") is None:
            kinds.append("cuda")
    if args.arch:
        os.environ["TORCH_CUDA_ARCH_LIST"] = args.arch
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
