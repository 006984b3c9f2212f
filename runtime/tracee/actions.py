"""What a system-call handler asks of the event loop: its result bits, combined with `|`.

A leaf module (it imports nothing): the loop (runtime.tracee.loop), the engine's own handlers
(runtime.syscall.enter) and the extensions (runtime.extension, which re-exports them as part of its
hook interface) all take them from here, so no import runs from the loop back up to the extensions.

- `CHANGED`: the handler modified the register array; the loop writes it back once.
- `EXIT`: the handler wants the exit stop of this call (its `exit` hook runs there).
- `SKIP`: the call is not run; the guest gets `t.ret` (a value, or -errno) as its result.
"""

CHANGED = 1
EXIT = 2
SKIP = 4
