"""Guest <-> host path translation for the tracer (PRoot's src/path/ in small pieces).

- `binding.Mapper`: the guest view of the host (rootfs + binds); `to_host`, `to_guest`, `readonly`.
- `canon`: component-by-component canonicalisation of a guest path inside the guest root.
- `proc`: /proc magic links (`/proc/self`, `/proc/PID/{exe,cwd,root,fd/N}`) seen from the guest.

Paths are `str`; bytes read from a tracee are decoded with `os.fsdecode` (surrogateescape), so any
byte string round-trips through `os.fsencode`.
"""

from runtime.path.binding import Mapper
from runtime.path.proc import ProcState

__all__ = ["Mapper", "ProcState"]
