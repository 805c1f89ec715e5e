"""Kernel-level confinement of a worker process: rlimits, privileges, Landlock and seccomp.

These are the layers that hold even if the Python-level guard (guard.py) is bypassed, e.g. by a
memory-corruption trick: the kernel does not care how the program got hold of os.system.

Everything here runs in the forked worker, in its trusted set-up phase, before any model code:

  rlimits    CPU, address space, file size, open files, processes, core dumps
  no_new_privs + privilege drop
             as root: setuid(nobody) when nobody can read the Python installation, otherwise
             stay uid 0 but drop every capability (Landlock then guards root-owned files)
  Landlock   (Linux >= 5.13) the filesystem is read-only below the Python library directories,
             read-write below the scratch directory, and invisible everywhere else; on ABI >= 4 TCP
             bind/connect are refused, on ABI >= 6 signals to processes outside the sandbox too
  seccomp    (x86_64) a deny-list filter: no sockets, no exec, no fork/clone (hence no threads),
             no ptrace, no signals to other processes, no mount/namespace/module/keyring calls,
             no raising rlimits of other processes, no SysV IPC, no io_uring

Every step is best-effort where the kernel lacks the feature; `report()` says what is active.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import resource
import stat

# ---------------------------------------------------------------------------------------- rlimits


def set_rlimits(*, cpu_seconds: tuple[int, int], memory_bytes: int, file_bytes: int,
                open_files: int, processes: int) -> None:
    """Soft = hard for everything but CPU, so nothing can be raised back (that needs
    CAP_SYS_RESOURCE, which workers drop). CPU: SIGXCPU at the soft limit, SIGKILL at the hard."""
    soft_cpu, hard_cpu = cpu_seconds
    resource.setrlimit(resource.RLIMIT_CPU, (soft_cpu, hard_cpu))
    pairs = [
        (resource.RLIMIT_AS, memory_bytes),
        (resource.RLIMIT_FSIZE, file_bytes),
        (resource.RLIMIT_NOFILE, open_files),
        (resource.RLIMIT_NPROC, processes),
        (resource.RLIMIT_CORE, 0),
    ]
    for name in ("RLIMIT_MSGQUEUE", "RLIMIT_MEMLOCK", "RLIMIT_RTPRIO"):
        if hasattr(resource, name):
            pairs.append((getattr(resource, name), 0))
    for which, value in pairs:
        soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


# ------------------------------------------------------------------------------ libc and prctl

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
if hasattr(_libc, "prctl"):  # Linux; the module stays importable elsewhere (Sandbox refuses)
    _libc.prctl.restype = ctypes.c_int
    _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                            ctypes.c_ulong]

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_X86_64 = platform.machine() in ("x86_64", "AMD64")


def _prctl(option: int, a: int = 0, b: int = 0, c: int = 0, d: int = 0) -> None:
    if _libc.prctl(option, a, b, c, d) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl({option}): {os.strerror(e)}")


def _syscall(nr: int, *args: object) -> int:
    r = _libc.syscall(nr, *args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"syscall {nr}: {os.strerror(e)}")
    return r


def no_new_privs() -> None:
    """Required for unprivileged Landlock/seccomp; also makes setuid binaries inert."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def die_with_parent(sig: int = 9) -> None:
    """The kernel kills this process when the process that forked it exits (the zygote)."""
    _prctl(PR_SET_PDEATHSIG, sig)


# ---------------------------------------------------------------------------------- privileges

NOBODY = 65534


def _cap_last() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


# Read at import (in the zygote): once a worker is under Landlock it cannot read /proc/sys.
CAP_LAST = _cap_last()


def readable_by_others(path: str) -> bool:
    """Whether a user with no relation to the owner can reach and read `path` (mode bits only)."""
    path = os.path.realpath(path)
    try:
        if os.stat(path).st_mode & (stat.S_IROTH | stat.S_IXOTH) != (stat.S_IROTH | stat.S_IXOTH):
            return False
        parent = os.path.dirname(path)
        while True:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            if parent == "/":
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


def privilege_mode(read_roots: list[str]) -> str:
    """How a worker drops root: 'nobody' if nobody can still read Python, else 'nocaps'."""
    if os.geteuid() != 0:
        return "same-user"
    return "nobody" if all(readable_by_others(p) for p in read_roots) else "nocaps"


def drop_privileges(mode: str) -> None:
    """Give up what root could do. 'nobody': become uid/gid 65534 (all capabilities go with it).
    'nocaps': stay uid 0 (so the root-only Python install stays readable) with every capability
    removed from all sets and the bounding set, and securebits locked so none can come back."""
    if mode == "nobody":
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    elif mode == "nocaps":
        # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS(off), NO_CAP_AMBIENT_RAISE, each with its LOCKED bit.
        _prctl(PR_SET_SECUREBITS, 0b1110_1111)
        for cap in range(CAP_LAST + 1):
            _prctl(PR_CAPBSET_DROP, cap)
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()                  # effective/permitted/inheritable = 0
        _syscall(126 if _X86_64 else 91, header, data)  # capset
    if mode != "same-user" and _cap_eff() != 0:
        raise OSError(errno.EPERM, "capabilities are still present after dropping privileges")


def _cap_eff() -> int:
    """Effective capabilities, via capget (no /proc: Landlock may already hide it)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    _syscall(125 if _X86_64 else 90, header, data)  # capget
    return data[0] | (data[3] << 32)


# ------------------------------------------------------------------------------------ Landlock

_LL_CREATE, _LL_ADD_RULE, _LL_RESTRICT = 444, 445, 446  # same numbers on every architecture
_LL_RULE_PATH_BENEATH = 1
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_REMOVE_DIR, _FS_REMOVE_FILE, _FS_MAKE_DIR, _FS_MAKE_REG = 1 << 4, 1 << 5, 1 << 7, 1 << 8
_FS_REFER, _FS_TRUNCATE = 1 << 13, 1 << 14


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    try:
        return _syscall(_LL_CREATE, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    except OSError:
        return 0


def seccomp_filters_available() -> bool:
    """Whether a worker here can install the filter: x86-64 (the only syscall table below) and a
    kernel with seccomp filter mode (it lists Seccomp_filters in /proc/<pid>/status)."""
    try:
        with open("/proc/self/status") as f:
            return _X86_64 and "Seccomp_filters:" in f.read()
    except OSError:
        return False


def landlock(read_dirs: list[str], write_dirs: list[str]) -> int:
    """Restrict this process (and anything it could ever start) to the given directories.

    Returns the ABI used (0: not available, nothing done). Needs no_new_privs() first."""
    abi = landlock_abi()
    if abi <= 0:
        return 0
    handled = (1 << 13) - 1                       # ABI 1: execute ... make_sym
    if abi >= 2:
        handled |= _FS_REFER
    if abi >= 3:
        handled |= _FS_TRUNCATE
    if abi >= 5:
        handled |= 1 << 15                        # IOCTL_DEV
    attr = _RulesetAttr(fs=handled)
    size = 8
    if abi >= 4:
        attr.net, size = 0b11, 16                 # BIND_TCP | CONNECT_TCP, no rule allows them
    if abi >= 6:
        attr.scoped, size = 0b11, 24              # abstract unix sockets and signals stay inside
    ruleset = _syscall(_LL_CREATE, ctypes.byref(attr), size, 0)
    try:
        read = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
        write = (read | _FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE_DIR
                 | _FS_MAKE_REG | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0))
        for dirs, access in ((read_dirs, read), (write_dirs, write & handled)):
            for d in dirs:
                try:
                    fd = os.open(d, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # a library directory that does not exist: nothing to allow
                try:
                    rule = _PathBeneath(allowed=access, parent_fd=fd)
                    _syscall(_LL_ADD_RULE, ruleset, _LL_RULE_PATH_BENEATH, ctypes.byref(rule), 0)
                finally:
                    os.close(fd)
        _syscall(_LL_RESTRICT, ruleset, 0)
    finally:
        os.close(ruleset)
    return abi


# ------------------------------------------------------------------------------------- seccomp

# x86_64 syscall numbers refused with EPERM. Grouped by what they would let a program do.
_DENY_X86_64 = {
    # network and local sockets
    "socket": 41, "connect": 42, "accept": 43, "sendto": 44, "recvfrom": 45, "sendmsg": 46,
    "recvmsg": 47, "shutdown": 48, "bind": 49, "listen": 50, "socketpair": 53, "accept4": 288,
    # new processes and threads, running other programs
    "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322,
    # touching other processes
    "kill": 62, "tkill": 200, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297, "ptrace": 101,
    "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "pidfd_open": 434,
    "pidfd_send_signal": 424, "pidfd_getfd": 438, "process_madvise": 440,
    "setpriority": 141, "sched_setparam": 142, "sched_setscheduler": 144, "sched_setaffinity": 203,
    "sched_setattr": 314, "ioprio_set": 251, "migrate_pages": 256, "move_pages": 279,
    "setrlimit": 160,
    # shared memory / message queues with other processes
    "shmget": 29, "shmat": 30, "shmctl": 31, "semget": 64, "semop": 65, "semctl": 66, "shmdt": 67,
    "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "semtimedop": 220, "mq_open": 240,
    "mq_unlink": 241, "mq_timedsend": 242, "mq_timedreceive": 243, "mq_notify": 244,
    "mq_getsetattr": 245,
    # identity and privileges
    "setuid": 105, "setgid": 106, "setreuid": 113, "setregid": 114, "setgroups": 116,
    "setresuid": 117, "setresgid": 119, "setfsuid": 122, "setfsgid": 123, "capset": 126,
    "personality": 135,
    # the machine: mounts, namespaces, modules, clocks, keys, tracing, kernel interfaces
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "init_module": 175, "finit_module": 313,
    "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320, "reboot": 169, "swapon": 167,
    "swapoff": 168, "syslog": 103, "acct": 163, "settimeofday": 164, "clock_settime": 227,
    "clock_adjtime": 305, "adjtimex": 159, "sethostname": 170, "setdomainname": 171, "iopl": 172,
    "ioperm": 173, "quotactl": 179, "quotactl_fd": 443, "lookup_dcookie": 212, "vhangup": 153,
    "modify_ldt": 154, "uselib": 134, "mknod": 133, "mknodat": 259, "add_key": 248,
    "request_key": 249, "keyctl": 250, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "name_to_handle_at": 303, "open_by_handle_at": 304,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    # file metadata, which Landlock does not cover: modes, owners, times, extended attributes
    # (a worker in "nocaps" mode is still uid 0 and owns most files: chmod o+r /etc/shadow would
    # work for code past the audit hook, and numpy's raw memory access can get past it)
    "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452, "chown": 92, "fchown": 93,
    "lchown": 94, "fchownat": 260, "utime": 132, "utimes": 235, "futimesat": 261, "utimensat": 280,
    "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198,
    "fremovexattr": 199, "setxattrat": 463, "removexattrat": 466,
    # truncating by path (Landlock covers it only from ABI 3, Linux 6.2; ftruncate of the program's
    # own open files stays allowed)
    "truncate": 76,
    # directories: a step needs none, and a 1,000-deep chain would defeat recursive cleanup
    "mkdir": 83, "mkdirat": 258,
}
_NR_CLONE3, _NR_PRLIMIT64, _NR_TGKILL = 435, 302, 234

_AUDIT_ARCH_X86_64 = 0xC000003E
_RET_KILL_PROCESS, _RET_ALLOW, _RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
_LD_ABS, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, ..|JGE|K, BPF_RET|K


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_program(pid: int) -> list[tuple[int, int, int, int]]:
    """The BPF program as (code, jt, jf, k) tuples (separate from installing it, for tests)."""
    eperm = _RET_ERRNO | errno.EPERM
    p = [
        (_LD_ABS, 0, 0, 4),                       # A = arch
        (_JEQ, 1, 0, _AUDIT_ARCH_X86_64),
        (_RET, 0, 0, _RET_KILL_PROCESS),          # i386 / x32 entry points: kill, never filter-skip
        (_LD_ABS, 0, 0, 0),                       # A = syscall number
        (_JGE, 0, 1, 0x40000000),                 # x32 ABI numbers
        (_RET, 0, 0, eperm),
    ]
    for nr in sorted(set(_DENY_X86_64.values())):
        p += [(_JEQ, 0, 1, nr), (_RET, 0, 0, eperm)]
    # clone3 -> ENOSYS so libc falls back to clone, which is refused above with a clean EPERM.
    p += [(_JEQ, 0, 1, _NR_CLONE3), (_RET, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    # prlimit64 only on this process (pid argument 0): lowering its own limits is harmless.
    # tgkill only to this process (abort() signals itself).
    for nr, want in ((_NR_PRLIMIT64, 0), (_NR_TGKILL, pid)):
        p += [
            (_JEQ, 0, 6, nr),
            (_LD_ABS, 0, 0, 16),                  # args[0], low 32 bits
            (_JEQ, 0, 3, want),
            (_LD_ABS, 0, 0, 20),                  # args[0], high 32 bits
            (_JEQ, 0, 1, 0),
            (_RET, 0, 0, _RET_ALLOW),
            (_RET, 0, 0, eperm),
        ]
    p.append((_RET, 0, 0, _RET_ALLOW))
    return p


class Seccomp:
    """The filter, built once in the zygote (building ~150 ctypes structs per worker costs ~2 ms);
    `install` patches in the worker's own pid and loads it."""

    def __init__(self) -> None:
        self.prog = seccomp_program(0x7FFFFFFF) if _X86_64 else []
        self.pid_slots = [i for i, ins in enumerate(self.prog) if ins[3] == 0x7FFFFFFF]
        self.array = (_SockFilter * len(self.prog))(*[_SockFilter(*ins) for ins in self.prog])

    def install(self, pid: int) -> bool:
        """Install on this process (inherited by anything it could start). False when the
        architecture is not x86_64 (the syscall table above would be wrong there)."""
        if not self.prog:
            return False
        for i in self.pid_slots:
            self.array[i].k = pid
        fprog = _SockFprog(len(self.prog), self.array)
        try:
            _prctl(PR_SET_SECCOMP, 2, ctypes.addressof(fprog))  # SECCOMP_MODE_FILTER
        except OSError as e:
            if e.errno == errno.EINVAL:  # kernel built without seccomp filters
                return False
            raise
        return True
