"""The archive's side of a run (`./app.run ARGS`), after the sh launcher (runtime/launcher.sh).

One job per module:
- `start`: the entry point: the order of things, environment scrubbing, errors to exit codes;
- `options`: the `--carryon-*` options as a record and `--carryon-help` (declared in runtime/options.py);
- `selfarchive`: the archive opened for a run (trailer via runtime/trailer.py, manifest, cache key);
- `install`: the runtime dir's publication and the image's cache entry (rules in runtime/cache.py);
- `runspec`: the image config and options turned into a RunSpec with `docker run`'s semantics;
- `info`: `--carryon-info`, `--carryon-extract`, `--carryon-clean`;
- `report`: verbose lines, the start-up timeline, progress bars.
Everything here is on the warm start's path or imported only when needed: no `dataclasses`, `re`,
`json`, `hashlib` at import time.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from runtime.launch.start import main as start_main
    return start_main(argv)
