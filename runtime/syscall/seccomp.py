"""The seccomp-bpf filter: stop (SECCOMP_RET_TRACE) only on the calls the tracer translates.

Built from `runtime.syscall.table` plus the calls the active extensions declare:
- any architecture but x86_64 (i386 `int 0x80`, and so 32-bit programs) -> ENOSYS;
- x32 calls (number with bit 30 set) and numbers above the last one known -> ENOSYS, so a path-taking
  call newer than this table can never run untranslated;
- translated calls -> TRACE; refused calls (open_by_handle_at, io_uring_setup, mount, ...) -> their
  errno; everything else -> ALLOW;
- `newfstatat(fd, path, AT_EMPTY_PATH)` with fd >= 0 and exactly that flag (glibc's `fstat`, a
  quarter of the stops of a Python start-up) -> ALLOW. The filter cannot read `path`: a program
  passing a NON-empty relative path with AT_EMPTY_PATH alone gets it resolved by the kernel
  relative to its (guest) directory fd, untranslated (stat metadata only; `..` and absolute
  symlinks there are not confined). Every other flag combination and AT_FDCWD stop as usual.
The dispatch is a binary search over number ranges (about 8 comparisons per system call).
"""

from __future__ import annotations

import errno

from runtime.syscall.sysnums import MAX_KNOWN, X32_BIT

TYPE_CHECKING = False           # not `typing.TYPE_CHECKING`: importing typing slows start-up
if TYPE_CHECKING:
    from collections.abc import Iterable

AUDIT_ARCH_X86_64 = 0xC000003E

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_TRACE = 0x7FF00000
RET_ALLOW = 0x7FFF0000

# classic BPF opcodes
LD_W_ABS = 0x20
JEQ_K = 0x15
JGE_K = 0x35
RET_K = 0x06

AT_EMPTY_PATH = 0x1000

OFF_NR = 0
OFF_ARCH = 4
OFF_ARGS = 16

# Leaf actions: ("ret", value) or ("trace_if_arg", index): trace when that 64-bit argument is non-zero.
Action = tuple


def _leaf(action: Action) -> list[tuple[int, int, int, int]]:
    if action[0] == "ret":
        return [(RET_K, 0, 0, action[1])]
    if action[0] == "fd_bypass":
        _, dirfd_idx, flags_idx = action
        return [
            (LD_W_ABS, 0, 0, OFF_ARGS + 8 * flags_idx),      # int flags: the low word
            (JEQ_K, 0, 3, AT_EMPTY_PATH),
            (LD_W_ABS, 0, 0, OFF_ARGS + 8 * dirfd_idx),      # int dirfd: negative -> trace
            (JGE_K, 1, 0, 0x80000000),
            (RET_K, 0, 0, RET_ALLOW),
            (RET_K, 0, 0, RET_TRACE),
        ]
    idx = action[1]
    lo = OFF_ARGS + 8 * idx
    return [
        (LD_W_ABS, 0, 0, lo),
        (JEQ_K, 1, 0, 0),            # low word zero: look at the high word
        (RET_K, 0, 0, RET_TRACE),
        (LD_W_ABS, 0, 0, lo + 4),
        (JEQ_K, 1, 0, 0),
        (RET_K, 0, 0, RET_TRACE),
        (RET_K, 0, 0, RET_ALLOW),
    ]


def _tree(starts: list[int], actions: list[Action]) -> list[tuple[int, int, int, int]]:
    """Code for: the number in A lies in the range starting at starts[i] -> actions[i]."""
    if len(starts) == 1:
        return _leaf(actions[0])
    mid = len(starts) // 2
    left = _tree(starts[:mid], actions[:mid])
    right = _tree(starts[mid:], actions[mid:])
    if len(left) > 255:
        raise ValueError("seccomp filter too large")
    return [(JGE_K, len(left), 0, starts[mid])] + left + right


def build(traced: Iterable[int], refused: dict[int, int] | None = None,
          traced_if_arg: dict[int, int] | None = None,
          fd_bypass: dict[int, tuple[int, int]] | None = None) -> list[tuple[int, int, int, int]]:
    """The filter program as (code, jt, jf, k) tuples.

    `traced`: numbers that stop; `refused`: number -> errno; `traced_if_arg`: number -> argument
    index: stop only when that argument is non-zero (sendto with a destination address);
    `fd_bypass`: number -> (dirfd index, flags index): stop unless dirfd >= 0 and flags is exactly
    AT_EMPTY_PATH. A number in `traced` always stops."""
    per_nr: dict[int, Action] = {}
    for nr, (d, f) in (fd_bypass or {}).items():
        per_nr[nr] = ("fd_bypass", d, f)
    for nr in traced:
        per_nr[nr] = ("ret", RET_TRACE)
    for nr, idx in (traced_if_arg or {}).items():
        if nr not in per_nr:
            per_nr[nr] = ("trace_if_arg", idx)
    for nr, err in (refused or {}).items():
        per_nr[nr] = ("ret", RET_ERRNO | (err & 0xFFFF))
    allow: Action = ("ret", RET_ALLOW)
    enosys: Action = ("ret", RET_ERRNO | errno.ENOSYS)
    starts: list[int] = [0]
    actions: list[Action] = [allow]
    for nr in sorted(per_nr):
        act = per_nr[nr]
        if starts[-1] == nr:
            actions[-1] = act
        elif actions[-1] != act:
            starts.append(nr)
            actions.append(act)
        if nr + 1 <= MAX_KNOWN:
            starts.append(nr + 1)
            actions.append(allow)
    # merge equal neighbours
    s2: list[int] = []
    a2: list[Action] = []
    for s, a in zip(starts, actions):
        if a2 and a2[-1] == a:
            continue
        s2.append(s)
        a2.append(a)
    s2.append(MAX_KNOWN + 1)        # unknown (future) numbers and x32 (bit 30): ENOSYS
    a2.append(enosys)
    prog = [
        (LD_W_ABS, 0, 0, OFF_ARCH),
        (JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (RET_K, 0, 0, RET_ERRNO | errno.ENOSYS),
        (LD_W_ABS, 0, 0, OFF_NR),
    ]
    assert X32_BIT > MAX_KNOWN
    return prog + _tree(s2, a2)


def evaluate(prog: list[tuple[int, int, int, int]], nr: int, arch: int = AUDIT_ARCH_X86_64,
             args: tuple[int, ...] = (0, 0, 0, 0, 0, 0)) -> int:
    """Run the program on one system call (for tests): the SECCOMP_RET_* value it returns."""
    data = nr.to_bytes(4, "little") + arch.to_bytes(4, "little") + bytes(8)
    data += b"".join(a.to_bytes(8, "little") for a in args)
    a = 0
    pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == LD_W_ABS:
            a = int.from_bytes(data[k:k + 4], "little")
            pc += 1
        elif code == JEQ_K:
            pc += 1 + (jt if a == k else jf)
        elif code == JGE_K:
            pc += 1 + (jt if a >= k else jf)
        elif code == RET_K:
            return k
        else:
            raise ValueError(f"unknown opcode {code:#x}")
