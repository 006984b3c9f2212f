"""What a guest `execve` runs (PRoot's src/execve/): `elf` reads ELF headers (PT_INTERP, static or
dynamic), `shebang` parses `#!` lines, `plan` turns the guest's call into what the kernel can run on
the host (the guest's own loader, nested interpreters, the kernel's errors)."""
