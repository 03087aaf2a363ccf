"""The code reward's harness inside the sandbox (shipped as a file, run in place of the program; standard library only).

    python -I -B -S /run/ringjax/runner.py JOB_FD REPORT_FD calls|asserts        (plain.py lies beside it)

Two processes, so that the untrusted program never shares an interpreter with anything that decides a verdict:
- the runner (this process) forks the PROGRAM process, and only then reads its instructions from JOB_FD: the
  program's process never holds the job or the report descriptor. For asserts (whose source holds expected
  values and whose report is a verdict) the runner first makes itself non-dumpable, so that no other process of
  the sandbox can open its /proc/<pid>/mem or /proc/<pid>/fd; for calls the job holds only arguments and the
  report only data, and the runner skips it (ctypes costs a third of the run's start-up);
- the program process runs /box/main.py as a normal script (`__name__ == "__main__"`, `__file__`, `sys.argv[0]`),
  sends a line "n NAME ..." (its top-level callables) or "e ..." (it failed), then serves calls: it reads
  length-prefixed `marshal` frames (name, args, kwargs), calls the program's top-level `name`, and answers one
  line: "v LITERAL" (the return value in the plain encoding, `plain.py`) or "e TYPE 'message'". What it answers
  is data only: a forged answer is a claim about a return value, compared against expected values it never sees.

Job (`marshal`, written by the grader): ("calls", [(name, args, kwargs), ...]) relays each call's answer line to
REPORT_FD for the grader to decode and compare outside the sandbox; ("asserts", source) compiles `source` (test
code from a dataset) here, in an interpreter that never ran untrusted code, and runs it with the program's top-level
callables replaced by stubs that call them in the program process; the report is "passed" or "failed 'why'".
Either way the report travels on REPORT_FD, which only this process holds. The calls path imports nothing beyond
the interpreter's built-in modules: start-up is most of a sandboxed run's cost.
"""

import builtins
import marshal
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plain  # noqa: E402  (beside this file, not on the isolated interpreter's path)

PROGRAM = "/box/main.py"
LINE_CAP = 1 << 20  # longest answer line read from the program process


def main() -> None:
    job_fd, report_fd, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if mode == "asserts":
        import ctypes

        if ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 0
            sys.exit("runner: prctl(PR_SET_DUMPABLE, 0) failed")
    req_r, req_w = os.pipe()
    ans_r, ans_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (job_fd, report_fd, req_w, ans_r):
            os.close(fd)
        serve(req_r, ans_w)
        os._exit(0)
    os.close(req_r)
    os.close(ans_w)
    kind, payload = marshal.loads(read_all(job_fd))
    os.close(job_fd)
    program = Program(req_w, ans_r)
    if kind == "calls":
        for name, args, kwargs in payload:
            os.write(report_fd, program.call_raw(name, args, kwargs) + b"\n")
    else:
        os.write(report_fd, run_asserts(payload, program).encode() + b"\n")
    os.close(report_fd)


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def read_exactly(fd: int, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# ---------------------------------------------------------------------------------------------- program process


def serve(req_fd: int, ans_fd: int) -> None:
    """Run the program as __main__, report its top-level callables, then answer calls until EOF."""
    ans = os.fdopen(ans_fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    module = types.ModuleType("__main__")
    module.__file__ = PROGRAM
    module.__builtins__ = __builtins__
    sys.modules["__main__"] = module
    sys.argv = [PROGRAM]
    try:
        with open(PROGRAM, encoding="utf-8", errors="surrogateescape") as f:
            code = compile(f.read(), PROGRAM, "exec")
        exec(code, module.__dict__)
        status = "n " + " ".join(callables(module))
    except SystemExit as e:
        ok = e.code is None or e.code == 0
        status = "n " + " ".join(callables(module)) if ok else f"e SystemExit 'the program exited: {e.code!r:.100}'"
    except BaseException as e:  # noqa: BLE001 (anything the program raises is its failure, reported as data)
        status = failure(e)
    ans.write(status + "\n")
    if status.startswith("e "):
        return
    while (head := read_exactly(req_fd, 4)) is not None:
        frame = read_exactly(req_fd, int.from_bytes(head, "big"))
        if frame is None:
            return
        ans.write(answer(module.__dict__, frame) + "\n")


def callables(module: types.ModuleType) -> list[str]:
    return sorted(k for k, v in module.__dict__.items() if type(k) is str and k.isidentifier() and callable(v))


def answer(namespace: dict, frame: bytes) -> str:
    try:
        name, args, kwargs = marshal.loads(frame)
        fn = namespace.get(name)
        if fn is None or not callable(fn):
            return f"e NameError {'the program defines no function ' + repr(name)!r}"
        return "v " + plain.encode(fn(*args, **kwargs))
    except BaseException as e:  # noqa: BLE001
        return failure(e)


def failure(e: BaseException) -> str:
    """The answer line of a failure, "e TYPE 'message'": TYPE is the nearest builtin exception class of `e` (a test
    may expect `ValueError`)."""
    name = next((c.__name__ for c in type(e).__mro__ if getattr(builtins, c.__name__, None) is c), "Exception")
    try:
        message = str(e)[:300]
    except BaseException:  # noqa: BLE001 (a hostile __str__)
        message = "an exception"
    return f"e {name} {str.__repr__(message)}"


# ---------------------------------------------------------------------------------------------- runner process


class Program:
    """The program process, seen from the runner: `call_raw` returns its answer line to one call."""

    def __init__(self, req_fd: int, ans_fd: int):
        self.req_fd, self.ans_fd, self.buf = req_fd, ans_fd, b""
        self.status = self.read()
        names = self.status[2:].decode("utf-8", "replace").split() if self.status.startswith(b"n ") else []
        self.names = [n for n in names if n.isidentifier() and not n.startswith("__")]

    def read(self) -> bytes:
        while b"\n" not in self.buf:
            if len(self.buf) > LINE_CAP:
                return b"e RuntimeError 'the program process sent a line longer than the cap'"
            chunk = os.read(self.ans_fd, 1 << 16)
            if not chunk:
                return b"e RuntimeError 'the program process ended'"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def call_raw(self, name: str, args: tuple, kwargs: dict) -> bytes:
        if not self.status.startswith(b"n "):
            return self.status
        frame = marshal.dumps((name, tuple(args), dict(kwargs)))
        try:
            os.write(self.req_fd, len(frame).to_bytes(4, "big") + frame)
        except OSError:
            return b"e RuntimeError 'the program process ended'"
        return self.read()

    def call(self, name: str, args: tuple, kwargs: dict) -> object:
        """The program's `name(*args, **kwargs)` as plain data; an exception it raised is raised here as the
        builtin exception class it derives from (a test may expect `ValueError`), RuntimeError otherwise."""
        line = self.call_raw(name, args, kwargs).decode("utf-8", "replace")
        if line.startswith("v "):
            return plain.decode(line[2:])
        kind = line.split(" ", 2)[1] if line.startswith("e ") and line.count(" ") >= 2 else ""
        cls = getattr(builtins, kind, None)
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            cls = RuntimeError
        raise cls(f"{name}(...) failed in the program: {line[:400]}")


def run_asserts(source: str, program: Program) -> str:
    try:
        if not program.status.startswith(b"n "):
            return "failed " + repr(program.status[:400].decode("utf-8", "replace"))
        code = compile(source, "tests", "exec")
        # the program's functions, never under a builtin's name: the tests' `len` stays the real one
        namespace = {"__name__": "tests", **{n: stub(program, n) for n in program.names if not hasattr(builtins, n)}}
        exec(code, namespace)
        return "passed"
    except BaseException as e:  # noqa: BLE001
        return "failed " + failure(e)


def stub(program: Program, name: str):
    def call(*args, **kwargs):
        return program.call(name, args, kwargs)
    call.__name__ = name
    return call


if __name__ == "__main__":
    main()
