"""Run natively and in a guest by tests/test_engine_ptrace_emu.py: a traced child's stops, wait
statuses, registers and event messages, printed as one list (the two must agree)."""
import ctypes
import os
import signal

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
out = []
pid = os.fork()
if pid == 0:
    libc.ptrace(0, 0, None, None)
    os.kill(os.getpid(), signal.SIGSTOP)
    os._exit(7)
r = os.waitid(os.P_PID, pid, os.WEXITED | os.WSTOPPED)
out.append(("waitid", r.si_code, r.si_status))
out.append(("seccomp-option", libc.ptrace(0x4200, pid, None, 0x80), ctypes.get_errno()))
out.append(("setoptions", libc.ptrace(0x4200, pid, None, 0x1 | 0x40)))   # TRACESYSGOOD|TRACEEXIT
libc.ptrace(24, pid, None, None)                                  # PTRACE_SYSCALL
_, st = os.waitpid(pid, 0)
regs = (ctypes.c_ulong * 27)()
libc.ptrace(12, pid, None, ctypes.addressof(regs))
out.append(("entry", hex(st), regs[15], regs[5 + 9]))              # orig_rax, rdi = 7
libc.ptrace(7, pid, None, None)                                   # PTRACE_CONT
_, st = os.waitpid(pid, 0)
msg = ctypes.c_ulong()
libc.ptrace(0x4201, pid, None, ctypes.addressof(msg))
out.append(("exit-event", hex(st), hex(msg.value)))
libc.ptrace(7, pid, None, None)
try:                # (not compared: this kernel itself sometimes answers ECHILD here)
    os.waitpid(pid, 0)
except ChildProcessError:
    pass
print(out)
