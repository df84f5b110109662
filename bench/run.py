"""Run memdesc benchmarks: ``python bench/run.py [NAME...]``.

Each benchmark is a module ``bench/bench_NAME.py`` with ``main()`` printing its figures as lines
``bench: AREA.FIGURE = VALUE UNIT``. With no NAME every benchmark runs, in name order.
Benchmarks are never part of the test suite: speed and memory targets live here. Several
benchmarks run one process each, so their peak RSS figures do not include each other.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def run(name: str, path: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    start = time.perf_counter()
    module.main()
    print(f"bench: {name}.wall_time = {time.perf_counter() - start:.1f} s", flush=True)


def main(argv: list[str]) -> int:
    benches = available()
    names = argv or list(benches)
    unknown = [n for n in names if n not in benches]
    if unknown:
        print(f"bench: unknown benchmark(s) {', '.join(unknown)}; have: {', '.join(benches)}",
              file=sys.stderr)
        return 2
    if len(names) == 1:
        run(names[0], benches[names[0]])
        return 0
    # One process per benchmark, so each one's peak RSS and numba state are its own.
    status = 0
    for name in names:
        print(f"# {name}", flush=True)
        status |= subprocess.run([sys.executable, __file__, name]).returncode
    return status


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent / "src"))
    sys.exit(main(sys.argv[1:]))
