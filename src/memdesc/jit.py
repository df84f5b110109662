"""Numba compilation where the user can see it: a notice for every compile, and a warm-up.

Numba compiles a kernel the first time it is called with new argument types and keeps the
result in ``$NUMBA_CACHE_DIR`` (chosen by :mod:`memdesc`, keyed by the sources). A cold
compile of the emulator takes minutes, so:

* :func:`install_notice` (run by ``memdesc/__init__`` as soon as numba is imported) prints
  ``memdesc: compiling numba kernels ... (first run only)`` on stderr when a kernel is not in
  the cache, and how long it took when the process ends;
* ``python -m memdesc.jit`` (run by ``memdesc.sh`` at set-up) compiles every kernel that
  ``survey``, ``simulate`` and ``replay`` use, by running each command on a small input
  through the same code paths, printing one progress line per command. It also removes cache
  folders of older sources.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

#: Every kind of step on a small machine (docs/scenario-format.md): compiles what
#: `simulate` runs at each stage.
WARM_SCENARIO = """\
machine 256M cpus=2
seed 3
pagecache 8M file=a order=4
pagecache 2M file=b
anon 4M proc=p thp
anon 1M proc=p order=2
fork 2 touch=256K proc=w
kmalloc 500 size=8-4096 tag=o
kmalloc 4 size=12K-64K tag=big
kmalloc churn count=2000 sizes=8-512 live=200
zsmalloc 1M pool=z
netpool 512K pool=rx order=1
vmalloc 256K tag=v
reserve 256K
free half pagecache file=a
free half anon proc=p
truncate file=b to=1M
exit half proc=w
free half kmalloc tag=o
free half zsmalloc pool=z
free all netpool pool=rx
free all vmalloc tag=v
"""

_notice = {"installed": False, "quiet": False, "started": 0.0, "seconds": 0.0, "kernels": 0,
           "depth": 0}


def unliteral_calls() -> None:
    """Compile memdesc's kernels once per argument *type*, not once per constant.

    When a numba function calls another with a constant (``alloc_pages_nb(mem, S, gfp, 0,
    0, cpu)``), numba types the argument as ``Literal[int](0)`` and compiles the callee, and
    everything it calls, again for that value: the emulator had 323 signatures of 184
    functions, most of them such copies, and they were most of the cold compile time. LLVM
    still inlines and folds the constants, so nothing is lost at run time. Functions that
    need a literal (none in memdesc) would fail to type, loudly."""
    from numba.core import types
    from numba.core.dispatcher import Dispatcher

    original = Dispatcher.get_call_template
    if getattr(original, "memdesc_unliteral", False):
        return

    def get_call_template(self, args, kws):
        if getattr(self.py_func, "__module__", "").startswith("memdesc."):
            args = tuple(types.unliteral(a) for a in args)
            kws = {k: types.unliteral(v) for k, v in kws.items()}
        return original(self, args, kws)

    get_call_template.memdesc_unliteral = True
    Dispatcher.get_call_template = get_call_template


def install_notice() -> None:
    """Say on stderr when numba compiles (a cache miss), once per process, and at exit how
    many kernels took how long; and compile once per type (:func:`unliteral_calls`).
    Idempotent."""
    if _notice["installed"]:
        return
    unliteral_calls()
    from numba.core import event

    class Notice(event.Listener):
        def on_start(self, ev) -> None:
            _notice["depth"] += 1
            if _notice["depth"] > 1:
                return
            _notice["started"] = time.perf_counter()
            if _notice["kernels"] == 0 and not _notice["quiet"]:
                name = getattr(getattr(ev.data["dispatcher"], "py_func", None), "__name__", "")
                print(f"memdesc: compiling numba kernels ({name}, ...); first run only, "
                      f"cached in {os.environ.get('NUMBA_CACHE_DIR', '__pycache__')}",
                      file=sys.stderr, flush=True)

        def on_end(self, ev) -> None:
            _notice["depth"] -= 1
            if _notice["depth"] == 0:
                _notice["kernels"] += 1
                _notice["seconds"] += time.perf_counter() - _notice["started"]

    event.register("numba:compile", Notice())
    atexit.register(_summary)
    _notice["installed"] = True


def _summary() -> None:
    if _notice["kernels"] and not _notice["quiet"] and _notice["seconds"] >= 1.0:
        print(f"memdesc: compiled {_notice['kernels']} numba kernel(s) in "
              f"{_notice['seconds']:.0f} s (first run only)", file=sys.stderr)


def compile_stats() -> tuple[int, float]:
    """Top-level kernels compiled so far in this process and the seconds spent."""
    return _notice["kernels"], _notice["seconds"]


# ---- warm-up ------------------------------------------------------------------------------------

def _repo_file(*parts: str) -> Path | None:
    """A file of the source checkout (tests/data ...), when memdesc runs from one."""
    p = Path(__file__).resolve().parents[2].joinpath(*parts)
    return p if p.exists() else None


def _bundled_snapshot() -> Path:
    return Path(__file__).resolve().parent / "data" / "snapshot-idle"


def _cli(argv: list[str]) -> None:
    from memdesc.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(argv)
    if rc != 0:
        raise RuntimeError(f"memdesc {' '.join(argv)} exited with {rc}")


def _warm_survey(tmp: Path) -> None:
    _cli(["survey", "--snapshot", str(_bundled_snapshot())])


def _warm_simulate(tmp: Path) -> None:
    sc = tmp / "warm.scenario"
    sc.write_text(WARM_SCENARIO)
    _cli(["simulate", str(sc), "--stages", "all"])
    _cli(["simulate", str(sc), "--stages", "dynamic",
          "--fail", "desc:probability=20,context=any,seed=1",
          "--fail", "page:interval=50,times=3"])


def _warm_replay(tmp: Path) -> None:
    trace = _repo_file("tests", "data", "trace-small")
    if trace is None:
        raise FileNotFoundError("tests/data/trace-small is not in this installation")
    for mode in ("placement", "policy"):
        _cli(["replay", str(trace), "--snapshot", str(_bundled_snapshot()), "--stages", "all",
              "--mode", mode, "--samples", "4"])


def _warm_timing(tmp: Path) -> None:
    # accounting, the replay's lookups and folios, the cache model and the native run: a
    # recording with lookup events (policy replay, every stage) and a scenario's readbacks
    trace = _repo_file("tests", "data", "record-lookups")
    if trace is None:
        raise FileNotFoundError("tests/data/record-lookups is not in this installation")
    _cli(["timing", str(trace), "--stages", "all", "--repeats", "1", "--brief"])
    sc = tmp / "warm.scenario"
    sc.write_text(WARM_SCENARIO)
    _cli(["timing", str(sc), "--stages", "v6.18,page16", "--repeats", "1", "--brief"])


def _warm_fleet(tmp: Path) -> None:
    # what a local run's fork server loads before forking its worker processes (its one
    # kernel compiles here, not in front of a user's first `fleet survey`)
    import memdesc.analysis.fleet_preload  # noqa: F401


#: (command, what it runs, warm-up function)
PARTS: tuple[tuple[str, str, Callable[[Path], None]], ...] = (
    ("survey", "the bundled snapshot", _warm_survey),
    ("simulate", "every step kind at every stage, with fault injection", _warm_simulate),
    ("replay", "tests/data/trace-small, both modes, every stage", _warm_replay),
    ("fleet", "the local worker processes' preload", _warm_fleet),
    ("timing", "tests/data/record-lookups at every stage, a scenario, the native run",
     _warm_timing),
)

_HASH_DIR = re.compile(r"^[0-9a-f]{16}$")


def prune_stale(cache: str) -> list[str]:
    """Remove the sibling cache folders of older sources (names are 16 hex digits)."""
    base, mine = os.path.split(os.path.normpath(cache))
    gone = []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        if name != mine and _HASH_DIR.match(name):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            gone.append(name)
    return gone


def warm_up(parts: list[str] | None = None, out=sys.stderr) -> int:
    """Compile the kernels of ``parts`` (default all commands); one line per command on
    ``out``. A part that fails is reported and skipped (its kernels compile on first use)."""
    from memdesc import numba_cache_dir

    cache, ours = numba_cache_dir()
    if ours:
        prune_stale(cache)
    install_notice()
    _notice["quiet"] = True
    print(f"memdesc: compiling numba kernels into {cache} (first run only, a few minutes)",
          file=out, flush=True)
    t_all = time.perf_counter()
    beside = _start_beside(parts)
    try:
        _warm_parts(parts, beside, out)
        if beside is not None:
            _report_beside(beside, out)
    except BaseException:                      # Ctrl-C, or a bug: the child goes too
        if beside is not None and beside.poll() is None:
            beside.kill()
        raise
    print(f"memdesc: kernels ready in {time.perf_counter() - t_all:.0f} s", file=out, flush=True)
    return 0


#: the part compiled in a second process while this one compiles the others (it is the
#: longest, ~3/4 of the whole; numba compiles on one core, and set-up has the machine)
BESIDE = "simulate"


def _start_beside(parts: list[str] | None):
    """``python -m memdesc.jit simulate`` in a child process when every part is wanted and the
    machine has a second core (the two processes share the cache folder: numba writes each
    cache file whole, by rename)."""
    if parts is not None or (os.cpu_count() or 1) < 2:
        return None
    import subprocess

    return subprocess.Popen([sys.executable, "-m", "memdesc.jit", BESIDE],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _report_beside(child, out) -> None:
    """Wait for the child and print its part's progress line."""
    what = next(w for n, w, _ in PARTS if n == BESIDE)
    print(f"  {BESIDE:<9} ({what}) ...", end="", file=out, flush=True)
    text, _ = child.communicate()
    line = next((ln for ln in text.splitlines() if ln.startswith(f"  {BESIDE} ")), "")
    done = line.partition("...")[2]
    if child.returncode != 0 or not done:
        done = f" skipped: the compiling process exited with status {child.returncode}"
    print(done + " (in a second process)", file=out, flush=True)


def _warm_parts(parts: list[str] | None, beside, out) -> None:
    with tempfile.TemporaryDirectory(prefix="memdesc-jit-") as tmp:
        for name, what, fn in PARTS:
            if parts and name not in parts or beside is not None and name == BESIDE:
                continue
            k0, s0 = compile_stats()
            t0 = time.perf_counter()
            print(f"  {name:<9} ({what}) ...", end="", file=out, flush=True)
            try:
                fn(Path(tmp))
            except Exception as e:  # noqa: BLE001 -- set-up goes on; the kernel compiles later
                print(f" skipped: {e}", file=out, flush=True)
                continue
            k1, s1 = compile_stats()
            print(f" {k1 - k0} kernel(s) in {s1 - s0:.0f} s ({time.perf_counter() - t0:.0f} s)",
                  file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m memdesc.jit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [n for n, _, _ in PARTS]
    p.add_argument("parts", nargs="*", metavar="COMMAND",
                   help=f"commands to compile for: {', '.join(names)} (default: all)")
    args = p.parse_args(argv)
    for part in args.parts:
        if part not in names:
            p.error(f"{part!r} is not one of {', '.join(names)}")
    return warm_up(args.parts or None)


if __name__ == "__main__":  # pragma: no cover
    # run the imported module's main: the notice state must be the one numba's hook installed
    from memdesc.jit import main as _main

    sys.exit(_main())
