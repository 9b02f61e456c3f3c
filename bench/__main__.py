"""``python -m bench [scenario ...]``: run benchmark scenarios and print their tables.

A scenario is a module of this package with ``run(args) -> list[Row]``; it may define
``add_arguments(parser)`` for its own options, ``DEFAULT = True`` to run when no
scenario is named, and a docstring whose first line ``--list`` shows.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import bench
from bench.report import Row, table
from bench.tools import BenchError


def scenarios() -> dict[str, ModuleType]:
    """Every scenario module of the package, by name."""
    found = {}
    for info in pkgutil.iter_modules(bench.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if callable(getattr(module, "run", None)):
            found[getattr(module, "NAME", info.name)] = module
    return found


def _backends(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = set(names) - {"sqlite", "postgres"}
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"backends are sqlite and postgres, not {text!r}")
    return names


def parser(modules: dict[str, ModuleType]) -> argparse.ArgumentParser:
    """The command line: common options, then each scenario's own."""
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("scenario", nargs="*", help="scenarios to run (default: " + ", ".join(
        name for name, m in modules.items() if getattr(m, "DEFAULT", False)) + ")")  # fmt: skip
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument(
        "--duration", type=float, default=10.0, help="seconds per measured run (default 10)"
    )
    p.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of warm-up before each run (0: none)"
    )
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument(
        "--backends",
        type=_backends,
        default=["sqlite", "postgres"],
        help="sqlite,postgres (default both; postgres needs a DSN)",
    )
    p.add_argument(
        "--postgres",
        metavar="DSN",
        help="PostgreSQL DSN (default: $STAGESYNC_TEST_POSTGRES_DSN); the bench makes a"
        " scratch database per run when the role may",
    )
    p.add_argument("--profile", metavar="DIR", help="record a py-spy flame graph of each run")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    for module in modules.values():
        add = getattr(module, "add_arguments", None)
        if add is not None:
            add(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios; exit 1 on a bench error."""
    modules = scenarios()
    args = parser(modules).parse_args(argv)
    if args.list:
        for name, module in modules.items():
            summary = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
            default = "(default) " if getattr(module, "DEFAULT", False) else ""
            print(f"{name:<12} {default}{summary}")
        return 0
    names = args.scenario or [n for n, m in modules.items() if getattr(m, "DEFAULT", False)]
    unknown = [n for n in names if n not in modules]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    args.secret = "bench-" + secrets.token_hex(16)
    results: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="stagesync-bench-") as workdir:
        args.workdir = Path(workdir)
        print(
            f"stagesync bench: {os.cpu_count()} CPUs, Python {platform.python_version()},"
            f" {args.duration:g} s per run, wrk threads={args.threads}"
        )
        for name in names:
            started = time.monotonic()
            try:
                rows = modules[name].run(args)
            except BenchError as exc:
                print(f"bench: {name} failed: {exc}", file=sys.stderr)
                return 1
            results[name] = rows
            print(f"\n== {name} ({time.monotonic() - started:.0f} s)\n{table(rows)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
