"""The seccomp filter every sandboxed process runs under: the syscalls that escape, widen or inspect a sandbox fail.

bubblewrap loads it (`--seccomp FD`, a compiled BPF program built here with libseccomp through `pyseccomp`) just
before it execs the sandbox's first process; it is inherited by every child and cannot be removed. Everything not
listed is allowed: the filter closes holes, the namespaces and rlimits do the containing.

Blocked with EPERM:
- new namespaces and mounts: unshare, setns, mount and the new mount API, pivot_root, chroot, and clone/clone3 with
  any CLONE_NEW* flag (clone3 passes its flags in memory a filter cannot read, so clone3 fails with ENOSYS and the C
  library falls back to clone, whose flags are checked). Started by root, bubblewrap runs without a user namespace,
  so `--disable-userns` does not apply there: this filter is what stops a nested user namespace (and with it every
  capability inside it, a private network or a tmpfs outside the disk cap);
- inspecting or writing other processes: ptrace, process_vm_readv/writev, pidfd_getfd, kcmp;
- memory no rlimit accounts for: memfd_create (file pages outside RLIMIT_AS and the tmpfs caps), System V shared
  memory and message queues, POSIX message queues;
- kernel attack surface a program never needs: keyctl, add_key, request_key, bpf, perf_event_open, userfaultfd,
  io_uring, open_by_handle_at, name_to_handle_at, fanotify, module loading, kexec, reboot, swap, syslog, acct,
  clock and host-name setting, quotactl, iopl/ioperm, personality changes that turn off address randomisation.
Other architectures' system calls (32-bit `int 0x80`, x32) kill the process: libseccomp's default for a foreign ABI.
"""

from __future__ import annotations

import errno
import functools
import os

BLOCKED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "open_by_handle_at", "name_to_handle_at", "fanotify_init", "init_module", "finit_module",
    "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "syslog", "acct",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "quotactl",
    "iopl", "ioperm", "lookup_dcookie", "vhangup", "memfd_create", "memfd_secret", "shmget", "shmat", "msgget",
    "mq_open",
)
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
CLONE_NEW_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)
ADDR_NO_RANDOMIZE = 0x0040000


@functools.cache
def seccomp_bpf() -> bytes:
    """The compiled filter (for bwrap's `--seccomp FD`); RuntimeError saying what to install if libseccomp is
    missing."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as e:  # pyseccomp loads libseccomp.so.2 when imported
        raise RuntimeError(f"the sandbox's seccomp filter needs libseccomp (apt-get install libseccomp2) and "
                           f"pyseccomp (pip install pyseccomp): {e}") from None
    f = sc.SyscallFilter(defaction=sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in BLOCKED:
        f.add_rule(deny, name)
    for flag in CLONE_NEW_FLAGS:
        f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(deny, "personality", sc.Arg(0, sc.MASKED_EQ, ADDR_NO_RANDOMIZE, ADDR_NO_RANDOMIZE))
    with os.fdopen(os.memfd_create("seccomp"), "w+b") as buf:
        f.export_bpf(buf)
        buf.seek(0)
        return buf.read()
