# Sourced by scripts/demo and scripts/test: Debian packages (as root, when missing), .venv from
# Debian's /usr/bin/python3 with the project installed (editable), and the fixture images.
PY=/usr/bin/python3
APT_PKGS="python3-venv python3-dev proot busybox-static umoci skopeo zstd util-linux iproute2 procps binutils gcc libzstd-dev docker-registry apache2-utils musl musl-dev musl-tools"

carryon_setup() {
    if [ "$(id -u)" = 0 ]; then
        local need="" p
        for p in $APT_PKGS; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need="$need $p"
        done
        if [ -n "$need" ]; then
            echo "== installing Debian packages:$need"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
        fi
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "== creating .venv from $PY"
        "$PY" -m venv .venv
    fi
    # editable "compat" mode: a plain path in a .pth file; the default mode's import finder costs
    # ~17 ms at every Python start (it imports pathlib, urllib, ...), which `carryon exec` would pay
    # `[test]`: ruff and mypy, which scripts/test runs before pytest
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat \
        2>&1 | grep -v '^WARNING: Location' || true
    # byte-code up front: with PYTHONDONTWRITEBYTECODE set, every start would compile the sources
    .venv/bin/python -m compileall -q packer runtime >/dev/null || true
    .venv/bin/python -c 'import packer, runtime, ptrace, zstandard'   # fail early on a broken install
    # the engine's native stop loop (runtime/tracee/fastloop.c); without a C compiler the engine
    # runs its Python loop only (the frozen runtime built for archives always has it)
    if command -v "${CC:-cc}" >/dev/null 2>&1; then
        .venv/bin/python -m runtime.tracee.native >/dev/null
        .venv/bin/python -m runtime.execve.loader >/dev/null     # carryon's program loader
        .venv/bin/python -m runtime.launch.nsrun >/dev/null      # the userns engine's executor
    else
        echo "warning: no C compiler: the engine runs without its native stop loop and its loader" >&2
    fi
    export PATH="$PWD/.venv/bin:$PATH"
    echo "== building fixtures"
    scripts/build-fixtures
}
