"""The tracer's side of a traced process (PRoot's src/tracee/), one job per module.

- `ffi`: the kernel interface through ctypes (ptrace, seccomp, registers in python-ptrace's layout);
- `state`: a traced thread (`Tracee`) and what the tracer keeps per process;
- `mem`: reading and writing tracee memory (process_vm_readv, /proc/PID/mem, scratch space);
- `loop`: the event loop (stops, events, signals, exits) that calls the handlers;
- `actions`: the bits a handler answers with (CHANGED, EXIT, SKIP), a leaf module;
- `native` + `fastloop.c`/`fastpath.c`/`fastport.c`/`fastloop.h`: the native stop loop that answers
  settled stops for Python (constants checked against Python by tests/test_engine_abi.py);
- `placement`: keeping the tracer on the CPU of the guest it serves.
"""
