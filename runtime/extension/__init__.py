"""Optional features that hook system calls (PRoot's extensions), e.g. fake_id (-0/-i), fake_root
(-0), kernel_release (-k), portmap. Each exists only when its option is given: a run without them
stops on nothing more than the path calls.

An extension is an object with:

- `enter_calls`: the syscall numbers (`runtime.syscall.sysnums.NUMBERS[...]`) it wants to see when
  they are entered. The seccomp filter stops on them (in addition to the path calls).
- `enter_calls_if_arg` (optional): {number: argument index} for calls of `enter_calls` worth a stop
  only when that argument is non-zero (sendto/recvfrom with an address); the seccomp filter lets
  the others run without stopping (the plain engine still calls `enter` for them).
- `enter(t, regs) -> int`: called at the enter stop of one of those calls, AFTER the engine's own
  path translation (path arguments already point at host paths). `t` is the `runtime.tracee.state.
  Tracee` (pid, memory access through `runtime.tracee.mem`, `t.ext` a dict for per-process state
  the extension keeps under its own key, `t.mapper` the path mapper of that process), `regs` the
  raw register array (`runtime.tracee.ffi`: `regs[ffi.ARG[i]]` is argument i, `regs[ffi.R_ORIG_RAX]`
  the number). It returns a combination of the action bits below (`runtime.tracee.actions`, a
  leaf module the event loop takes them from too; re-exported here):
    * `CHANGED`: it modified `regs` (the engine writes them back once);
    * `EXIT`: call its `exit(t, regs)` at the exit stop of this call;
    * `SKIP`: do not run the call; the guest gets `t.ret` as its result (a value, or -errno).
      Raising OSError(errno) does the same with -errno.
  New data for the tracee goes below its stack pointer with `runtime.tracee.mem.push(t, bytes)`
  (which returns the address to point a register at).
- `exit(t, regs) -> int`: at the exit stop, `regs[ffi.R_RAX]` is the result; return CHANGED when
  it modified it (or other registers).
- `fork(parent, child) -> None`: a new process/thread `child` was created by `parent` (copy the
  per-process state you keep in `t.ext`).
- `close() -> None`: at the end of the run.

Extensions are created by `build(spec)` below from the `RunSpec`; the engine calls only these.
"""

from __future__ import annotations

from runtime.spec import RunSpec
from runtime.tracee.actions import CHANGED, EXIT, SKIP  # noqa: F401 (part of the hook interface)


class Base:
    """The hook interface (documented above), with no calls and no-op hooks: subclass it."""

    enter_calls: frozenset[int] = frozenset()

    def enter(self, t, regs) -> int:
        return 0

    def exit(self, t, regs) -> int:
        return 0

    def fork(self, parent, child) -> None:
        pass

    def close(self) -> None:
        pass


Extension = Base


def build(spec: RunSpec) -> list[Base]:
    """The extensions a run needs, in the order their hooks run."""
    exts: list[Base] = []
    if spec.uid == 0:                   # -0 (or -i 0:N): PRoot's fake root, privileges faked too
        from runtime.extension.fake_root import FakeRoot
        exts.append(FakeRoot(spec))
    elif spec.uid is not None or spec.gid is not None:
        from runtime.extension.fake_id import FakeId
        exts.append(FakeId(spec))
    if spec.kernel_release is not None:
        from runtime.extension.kernel_release import KernelRelease
        exts.append(KernelRelease(spec.kernel_release))
    if spec.overlay:
        from runtime.extension.cow_fd import CowFd
        exts.append(CowFd())            # after fake_id: an fchown it answers is no change
    if spec.port_map or spec.netcoop:
        try:
            from runtime.extension.portmap import PortMap  # type: ignore[import-not-found]
        except ImportError:
            from runtime.errors import CarryonError
            raise CarryonError("port translation is not available in this build") from None
        exts.append(PortMap(spec))
    return exts
