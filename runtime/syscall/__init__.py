"""System calls as the tracer sees them (PRoot's src/syscall/).

- `sysnums`: x86_64 system call numbers and names;
- `table`: every call that takes a path (or must be refused), with its path arguments and rules;
- `seccomp`: the seccomp-bpf filter built from the table and the extensions' calls;
- `enter`: the handlers at a call's entry (path rewriting, copy-on-write, exec, getcwd, readlink...).
"""
