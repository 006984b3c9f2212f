"""Networking side of the runtime: socket addresses, `-p`/`--carryon-publish` parsing, the per-run port
table and the ports file. The tracer glue lives in `runtime.extension.portmap`."""
