"""What a user sees: mrt-ray's own lines (logger "mrt_ray") and one progress bar. Everything the other libraries of
a run print (vLLM, DeepSpeed, Ray, W&B, transformers, torch: warnings, NUMA/tcmalloc/Triton notices) goes to the
run's logs/ folder instead:

- the driver: `attach(run_dir)` points this process's stdout and stderr file descriptors at logs/driver.log, so
  output from C++, subprocesses and every Python logger lands there too; the console keeps a copy of the terminal's
  descriptors for mrt-ray's lines (`term()`), the progress bars and the commands' results (`out()`);
- each actor: logs/<role>-<index>.log (`redirect_actor_output`, called by mrt_ray/actors.py as the actor starts; what
  the worker process printed before, e.g. import-time notices, is copied in first), with Ray's log_to_driver off.

`-v` / MRT_RAY_VERBOSE=1 keeps everything on the console, as before. Library use (tests, notebooks) changes nothing:
only the CLI calls `setup`. An exception inside an actor carries a one-line note (`note_failure`) that names the
actor, the method and its log; `failure_line` finds it again in the driver, so the CLI prints that line alone.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from pathlib import Path
from typing import TextIO

log = logging.getLogger("mrt_ray")
VERBOSE_ENV = "MRT_RAY_VERBOSE"
ACTOR_ENV, ACTOR_LOG_ENV = "MRT_RAY_ACTOR", "MRT_RAY_ACTOR_LOG"  # set per actor by actors.Placement
RAY_MARKERS = (b":job_id:", b":actor_name:", b":task_name:")  # Ray's own tags in its worker output files
NOTE = "[mrt-ray] "  # prefix of the note an actor adds to its exception
_NOTE_LINE = re.compile(r"^\[mrt-ray\] (.+)$", re.M)


class _State:
    quiet = False  # setup(verbose=False) was called
    log_file: Path | None = None  # where this process's stdout/stderr go (attached)
    term: TextIO | None = None  # the terminal's stderr and stdout, kept before redirecting
    out: TextIO | None = None
    saved: tuple[int, int] | None = None  # the original descriptors 1 and 2, restored by `restore`


class _TermHandler(logging.StreamHandler):
    """Writes to the terminal's stderr as it is at each record (sys.stderr until a run dir is attached)."""

    @property
    def stream(self):
        return term()

    @stream.setter
    def stream(self, value):  # logging.StreamHandler.__init__ assigns it
        pass


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def setup(verbose_flag: bool = False) -> None:
    """The CLI's console: mrt-ray's lines as `mrt-ray: <message>` (DEBUG and up when verbose, else INFO); quiet
    (the output of the other libraries kept out of the console once `attach` is called) unless verbose."""
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"  # Ray workers and subprocesses see it too
    _State.quiet = not verbose()
    handler = _TermHandler()
    handler.setFormatter(logging.Formatter("mrt-ray: %(message)s"))
    log.handlers = [handler]
    log.setLevel(logging.DEBUG if verbose() else logging.INFO)
    log.propagate = False


def quiet() -> bool:
    return _State.quiet


def term() -> TextIO:
    """Where mrt-ray's lines and progress bars go: the terminal, also after `attach` redirected stderr."""
    return _State.term or sys.stderr


def out() -> TextIO:
    """Where a command's result goes: the terminal's stdout."""
    return _State.out or sys.stdout


def log_file() -> Path | None:
    return _State.log_file


def attach(run_dir: str | Path, name: str = "driver") -> Path | None:
    """Quiet mode: send this process's stdout and stderr to <run_dir>/logs/<name>.log (appended) and say so once.
    A no-op (None) without `setup` or when verbose."""
    if not _State.quiet:
        return None
    path = Path(run_dir).resolve() / "logs" / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if _State.saved is None:
        _State.saved = (os.dup(1), os.dup(2))
        _State.out = os.fdopen(os.dup(1), "w", buffering=1)
        _State.term = os.fdopen(os.dup(2), "w", buffering=1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if _State.log_file != path:
        log.info("writing %s; the output of vLLM, DeepSpeed, Ray and W&B goes to %s/ (-v shows it here)",
                 shown(run_dir), shown(path.parent))
    _State.log_file = path
    return path


def restore() -> None:
    """Undo `attach` and `setup` (the CLI's end; tests that call the CLI in-process)."""
    if _State.saved is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(_State.saved[0], 1)
        os.dup2(_State.saved[1], 2)
        for fd in _State.saved:
            os.close(fd)
        for f in (_State.out, _State.term):
            f.close()
    _State.saved = _State.out = _State.term = _State.log_file = None
    _State.quiet = False
    log.handlers = []
    log.propagate = True


def shown(path: str | Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def actor_log(run_dir: str | Path, role: str, index: int) -> str:
    """The log file of actor (role, index) in quiet mode; "" when verbose (its output streams to the console)."""
    if not _State.quiet:
        return ""
    return str(Path(run_dir).resolve() / "logs" / f"{role}-{index}.log")


def redirect_actor_output() -> str:
    """In an actor process as it starts: its stdout/stderr to the file named by MRT_RAY_ACTOR_LOG, after a copy of
    what it printed so far (Ray's worker .out/.err files). Returns the path, or "" when there is none or it cannot be
    written (e.g. a node without the driver's file system: the output stays in Ray's worker logs)."""
    path = os.environ.get(ACTOR_LOG_ENV, "")
    if not path:
        return ""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return ""
    sys.stdout.flush()
    sys.stderr.flush()
    for std in (1, 2):
        try:
            with open(os.readlink(f"/proc/self/fd/{std}"), "rb") as before:
                lines = before.read().splitlines(keepends=True)
        except OSError:  # not a regular file (a pipe, a terminal) or no /proc: nothing to copy
            continue
        os.write(fd, b"".join(ln for ln in lines if not ln.startswith(RAY_MARKERS)))
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return path


def note_failure(exc: BaseException, method: str) -> None:
    """In an actor: print the traceback to its (redirected) stderr and add the one-line note the driver reports."""
    who = os.environ.get(ACTOR_ENV, "actor")
    path = os.environ.get(ACTOR_LOG_ENV, "")
    last = (str(exc).strip().splitlines() or [""])[-1][:300]
    where = f" Full log: {path}" if path and os.path.exists(path) else ""
    exc.add_note(f"{NOTE}{who} failed during {method}: {type(exc).__name__}{': ' + last if last else ''}.{where}")
    traceback.print_exc()
    sys.stderr.flush()


def failure_line(exc: BaseException) -> str | None:
    """The note of an actor's failure in `exc`'s chain of causes: on an exception itself (Ray re-raises it with its
    attributes), else in the text of one of Ray's errors (an actor that failed as it started: RayActorError)."""
    chain, todo = [], [exc]
    while todo:
        e = todo.pop(0)
        if e is not None and all(e is not c for c in chain):
            chain.append(e)
            todo += [e.__cause__, e.__context__]
    notes = [n[len(NOTE):] for e in chain for n in getattr(e, "__notes__", ())
             if isinstance(n, str) and n.startswith(NOTE)]
    texts = [m.group(1) for e in chain if type(e).__module__.startswith("ray.") for m in [_NOTE_LINE.search(str(e))]
             if m]
    line = (notes or texts or [None])[0]
    if line is None:
        return None
    # the actor wrote its log's path as it saw it; show it from here
    return re.sub(r"Full log: (\S+)$", lambda f: f"Full log: {shown(f.group(1))}", line)


def error_line(exc: BaseException) -> str:
    """One line for an unexpected error: the actor's note if an actor failed, else the exception's last line and,
    when attached, the log that holds its traceback."""
    line = failure_line(exc)
    if line is None:
        last = (str(exc).strip().splitlines() or [""])[-1][:300]
        line = f"{type(exc).__name__}{': ' + last if last else ''}"
        if _State.log_file is not None:
            line += f". Full log: {shown(_State.log_file)}"
    return line
