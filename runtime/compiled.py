"""carryon's helper programs compiled from C (runtime/launch/nsrun.c, runtime/execve/loader.c):
which binary to run. Imports nothing but `os` until a build is needed (on start-up paths)."""

from __future__ import annotations

import os


def find(binary: str, source: str, switch: str, cache_name: str, build) -> str | None:
    """`binary` (beside `source`) when it is there, executable and not older than `source` (the
    frozen runtime ships the binary alone); None when the environment variable `switch` is "0" or the
    binary is stale (scripts/setup-env.sh or the module's `build` makes it again); with no binary,
    one built once into the user's cache (runtime.tracee.native.cached_build, `cache_name`)."""
    if os.environ.get(switch, "1") == "0":
        return None
    if os.path.exists(binary):
        try:
            if os.stat(source).st_mtime > os.stat(binary).st_mtime:
                return None
        except FileNotFoundError:
            pass                    # frozen: the binary alone
        except OSError:
            return None
        return binary if os.access(binary, os.X_OK) else None
    from runtime.tracee.native import cached_build
    return cached_build((source,), cache_name, build)
