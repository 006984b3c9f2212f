#!/bin/sh
# carryon self-extracting archive: POSIX sh launcher (runs under dash, bash, busybox sh).
# The payload is found from the fixed 512-byte trailer at the end of this file:
#   [launcher][runtime][manifest][rootfs][trailer]
# The runtime section: a tar.gz of `_internal/carryon-unzstd` ($rt_gz bytes), then one zstd frame of
# the runtime's tar, which that static program decompresses (0: the whole section is one tar.gz).
# This script only finds or unpacks the frozen runtime (PyInstaller onedir + its own loader and
# libraries) into the node cache and starts it; the runtime checks the archive, extracts the rootfs and
# runs the image's command. Tools used: sh builtins, ls, tail, head, gzip, tar, mkdir, mv, rm, chmod (df, id
# when present). Options: run with --carryon-help.
rt_kb=@CARRYON_RUNTIME_KB@
rt_gz=@CARRYON_RUNTIME_GZ@
rt_main=carryon-runtime
rt_ld=_internal/ld-linux-x86-64.so.2
rt_nsrun=_internal/runtime/launch/carryon-nsrun

set -f
die() { echo "carryon: $*" >&2; exit 125; }

self=$0
case $self in /*) ;; *) self=$PWD/$self ;; esac
[ -f "$self" ] && [ -r "$self" ] || die "cannot read the archive itself ($0)"

# ---- the runtime this launcher was made for (its sha256 is also the trailer's `runtime` line: a
# mismatch is refused below, and the runtime verifies every section against the trailer)
rt_sha=@CARRYON_RUNTIME_SHA256@
rt_key=rt-${rt_sha%????????????????????????????????}

# ---- cache candidates (same order as runtime/cache.py): --carryon-cache / CARRYON_CACHE, else
# $XDG_CACHE_HOME/carryon or ~/.cache/carryon, else per-user dirs under $TMPDIR, /tmp, /var/tmp.
explicit=${CARRYON_CACHE:-}
want=
for a in "$@"; do
  if [ -n "$want" ]; then
    [ "$want" = cache ] && explicit=$a
    want=; continue
  fi
  case $a in
    --carryon-cache=*) explicit=${a#--carryon-cache=} ;;
    --carryon-cache) want=cache ;;
    --carryon-*=*) ;;
    @CARRYON_FLAG_OPTIONS@) ;;   # the options without a value (runtime/options.py), put here at pack time
    --carryon-*) want=value ;;
    *) break ;;
  esac
done

uid=
if [ -r /proc/self/status ]; then
  while read -r k v rest; do
    case $k in Uid:) uid=$v; break ;; esac
  done </proc/self/status
fi
[ -n "$uid" ] || uid=$(id -u 2>/dev/null) || uid=
[ -n "$uid" ] || uid=unknown

cands=
add() {
  case $1 in /*) ;; *) return ;; esac
  case "
$cands
" in *"
$1
"*) return ;; esac
  cands="$cands
$1"
}
if [ -n "$explicit" ]; then
  case $explicit in /*) ;; *) explicit=$PWD/$explicit ;; esac
  add "$explicit"
else
  if [ -n "${XDG_CACHE_HOME:-}" ]; then add "$XDG_CACHE_HOME/carryon"
  elif [ -n "${HOME:-}" ] && [ "$HOME" != / ]; then add "$HOME/.cache/carryon"
  fi
  [ -n "${TMPDIR:-}" ] && add "${TMPDIR%/}/carryon-$uid"
  add "/tmp/carryon-$uid"
  add "/var/tmp/carryon-$uid"
fi

# ---- the trust rule (runtime/cache.py's, the same on every path): a default cache dir is used only
# when it is a real directory (no symlink), ours, not writable by group or others, in a parent owned by
# root or us that others cannot write (or that is sticky, like /tmp); a runtime dir inside is a real
# directory, ours and not writable by group or others, with a regular file as its marker. In an
# explicit cache (CARRYON_CACHE, --carryon-cache) that is not world-writable, another user's runtime
# dir is trusted too, and a group-writable one for the cache dir's group only. sh's `test` cannot see
# others' mode bits: one `ls -ldn` (sorted output; our paths form a prefix chain) answers for all.
trust_why=
trusted() {  # trusted DIR [ENTRY]: 0 when DIR (and DIR/ENTRY, published) may be used; else $trust_why
  _c=$1 _e=${2:-}
  if [ -n "$explicit" ]; then
    if [ -n "${2:-}" ]; then set -- "$_c/." "$_c/$2" "$_c/$2/.complete"; else set -- "$_c/."; fi
    _role=cache
  else
    _p=${_c%/*}
    [ -n "$_p" ] || _p=/
    if [ -n "${2:-}" ]; then set -- "$_p" "$_c" "$_c/$2" "$_c/$2/.complete"; else set -- "$_p" "$_c"; fi
    _role=parent
  fi
  _out=$(LC_ALL=C ls -ldn "$@" 2>/dev/null) || { trust_why="cannot stat $*"; return 1; }
  _cg= _cow= _n=0 _want=$# _ifs=$IFS
  trust_why=
  # one line per path: "MODE LINKS UID GID ...", split with the shell's own field splitting (no
  # `read`: it reads a byte per system call)
  IFS='
'
  for _line in $_out; do
    IFS=$_ifs
    # shellcheck disable=SC2086
    set -- $_line
    _m=$1 _u=${3:-} _g=${4:-}
    _n=$((_n + 1))
    _gw= _ow= _st=
    case $_m in ?????w*) _gw=1 ;; esac
    case $_m in ????????w*) _ow=1 ;; esac
    case $_m in ?????????[tT]*) _st=1 ;; esac
    case $_role in
      parent)
        if [ "$_u" != 0 ] && [ "$_u" != "$uid" ]; then trust_why="its parent is owned by uid $_u"
        elif [ -n "$_gw$_ow" ] && [ -z "$_st" ]; then trust_why="its parent is writable by others and not sticky"
        fi
        _role=cache ;;
      cache)
        case $_m in d*) ;; l*) trust_why="is a symbolic link" ;; *) trust_why="not a directory" ;; esac
        if [ -z "$explicit" ] && [ -z "$trust_why" ]; then
          if [ "$_u" != "$uid" ]; then trust_why="owned by uid $_u, not $uid"
          elif [ -n "$_gw$_ow" ]; then trust_why="writable by group or others"
          fi
        fi
        _cg=$_g _cow=$_ow _role=entry ;;
      entry)
        case $_m in d*) ;; *) trust_why="$_e is not a directory" ;; esac
        _shared=
        [ -n "$explicit" ] && [ -z "$_cow" ] && _shared=1
        if [ "$_u" != "$uid" ] && [ -z "$_shared" ]; then trust_why="$_e is owned by uid $_u"
        elif [ -n "$_ow" ]; then trust_why="$_e is writable by others"
        elif [ -n "$_gw" ] && { [ -z "$_shared" ] || [ "$_g" != "$_cg" ]; }; then trust_why="$_e is writable by group"
        fi
        _role=marker ;;
      marker)
        case $_m in -*) ;; *) trust_why="$_e's marker is not a regular file" ;; esac ;;
    esac
  done
  IFS=$_ifs
  [ "$_n" = "$_want" ] || trust_why="cannot stat $_c"
  [ -z "$trust_why" ]
}

old_kernel() {  # Linux before 2.6.39? (CARRYON_TEST_KERNEL_RELEASE: tests; no fork here)
  _r=${CARRYON_TEST_KERNEL_RELEASE:-}
  if [ -z "$_r" ]; then
    { read -r _r < /proc/sys/kernel/osrelease; } 2>/dev/null || return 1
  fi
  _ifs=$IFS; IFS=.-; set -- $_r; IFS=$_ifs
  case ${1:-x}.${2:-x}.${3:-x} in *[!0-9.]*) return 1 ;; esac
  [ "$1" -ne 2 ] && { [ "$1" -lt 2 ]; return; }
  [ "$2" -ne 6 ] && { [ "$2" -lt 6 ]; return; }
  [ "$3" -lt 39 ]
}

start() {  # start the runtime in dir $1; $2: published (1) or pending publication (0)
  _CARRYON_ARCHIVE=$self
  _CARRYON_RT=$1
  _CARRYON_RT_PUBLISHED=$2
  _CARRYON_RT_DEST=$3
  shift 3
  _PYI_ARCHIVE_FILE=$_CARRYON_RT/$rt_main
  _PYI_PARENT_PROCESS_LEVEL=-1
  export _CARRYON_ARCHIVE _CARRYON_RT _CARRYON_RT_PUBLISHED _CARRYON_RT_DEST _PYI_ARCHIVE_FILE \
    _PYI_PARENT_PROCESS_LEVEL
  unset _PYI_APPLICATION_HOME_DIR _PYI_LINUX_PROCESS_NAME _PYI_SPLASH_IPC
  if old_kernel; then   # the bundled glibc's fstat needs fstatat(AT_EMPTY_PATH): 2.6.39 (oldkernel.c)
    [ -x "$_CARRYON_RT/_internal/carryon-oldkernel" ] || die "this node runs Linux ${_r:-?}; this \
archive's runtime needs 2.6.39 or later (fstatat with AT_EMPTY_PATH) and has no helper for older ones"
    _CARRYON_OLD_KERNEL=$_r
    export _CARRYON_OLD_KERNEL
    exec "$_CARRYON_RT/_internal/carryon-oldkernel" "$_CARRYON_RT/$rt_ld" --inhibit-cache \
      --library-path "$_CARRYON_RT/_internal" "$_CARRYON_RT/$rt_main" "$@"
  fi
  # a published runtime's warm start goes through carryon-nsrun (runtime/launch/nsrun.c): it runs a
  # plain run of this archive on userns by the plan the Python runtime stored, else execs the latter
  if [ "$_CARRYON_RT_PUBLISHED" = 1 ] && [ -x "$_CARRYON_RT/$rt_nsrun" ]; then
    exec "$_CARRYON_RT/$rt_nsrun" --warm 5 "$_CARRYON_RT/$rt_ld" --inhibit-cache --library-path \
      "$_CARRYON_RT/_internal" "$_CARRYON_RT/$rt_main" "$@"
  fi
  exec "$_CARRYON_RT/$rt_ld" --inhibit-cache --library-path "$_CARRYON_RT/_internal" "$_CARRYON_RT/$rt_main" "$@"
}

# ---- warm: a published runtime (marker written last, directory published by rename) in a trusted
# place; `test -f` first, so that candidates without it cost no `ls`
IFS_SAVE=$IFS
IFS='
'
for c in $cands; do
  if [ -f "$c/$rt_key/.complete" ]; then
    IFS=$IFS_SAVE
    if trusted "$c" "$rt_key"; then
      rt=$c/$rt_key
      start "$rt" 1 "$rt" "$@"
    fi
    IFS='
'
  fi
done
IFS=$IFS_SAVE

# ---- cold: unpack the runtime into a private temp dir of the first usable candidate; the runtime
# verifies every section of the archive before it publishes that dir (rename) as $c/$rt_key.
# Trailer: "CARRYON-ARCHIVE 1" / "<section> <length> <sha256>" x4 / padding / "CARRYON-END".
trailer=$(tail -c 512 "$self" 2>/dev/null) || die "$self: cannot read the archive trailer"
magic= end= l_len= r_len= r_sha=
while read -r name len sha; do
  case $name in
    CARRYON-ARCHIVE) magic=$len ;;
    CARRYON-END) end=1 ;;
    launcher) l_len=$len ;;
    runtime) r_len=$len r_sha=$sha ;;
  esac
done <<CARRYON_TRAILER_EOF
$trailer
CARRYON_TRAILER_EOF
case "$magic:$end:$l_len:$r_len" in
  1:1:[0-9]*:[0-9]*) ;;
  *) die "$self: corrupted carryon archive (bad trailer)" ;;
esac
case $l_len$r_len in *[!0-9]*) die "$self: corrupted carryon archive (bad trailer)" ;; esac
[ "$r_len" -gt 0 ] || die "$self: bare carryon payload (no runtime): use 'carryon extract' or 'carryon exec'"
[ "$r_sha" = "$rt_sha" ] || die "$self: corrupted carryon archive (the trailer does not match the launcher)"
[ "$rt_gz" -lt "$r_len" ] || rt_gz=0
part() {  # bytes [$1, $1 + $2) of the runtime section on stdout (without `head`: to the end of the
  # file; gzip and carryon-unzstd stop at the end of their stream)
  if command -v head >/dev/null 2>&1; then
    tail -c +$((l_len + $1 + 1)) "$self" 2>/dev/null | head -c "$2" 2>/dev/null
  else
    tail -c +$((l_len + $1 + 1)) "$self" 2>/dev/null
  fi
}
section() { part 0 "$r_len"; }  # the runtime section's bytes on stdout
first=$r_len
[ "$rt_gz" -gt 0 ] && first=$rt_gz
# nothing from the runtime section runs unchecked: sha256 (computed while the first stage is unpacked,
# on another CPU, and checked before carryon-unzstd or the runtime starts) when the node has
# sha256sum, else gzip's own CRC and zstd's checksum (their statuses are checked below); the runtime
# then checks every section against the trailer
check_sha=
if command -v sha256sum >/dev/null 2>&1 && command -v head >/dev/null 2>&1; then
  check_sha=1
fi
host=localhost
[ -r /proc/sys/kernel/hostname ] && read -r host </proc/sys/kernel/hostname
case $host in ''|*[!A-Za-z0-9._-]*) host=localhost ;; esac
need_kb=$((rt_kb + rt_kb / 8 + 1024))
why=
IFS='
'
for c in $cands; do
  IFS=$IFS_SAVE
  if [ -n "$explicit" ]; then mkdir -p "$c" 2>/dev/null; else mkdir -p -m 700 "$c" 2>/dev/null; fi
  if ! trusted "$c"; then
    # a default dir of ours that others could write (older carryon, loose umask): made private again
    # (its entries are still checked one by one); anything else is skipped, never changed
    if [ -z "$explicit" ] && [ -d "$c" ] && [ ! -L "$c" ] && [ -O "$c" ] && chmod 700 "$c" 2>/dev/null &&
       trusted "$c"; then :
    else
      why="$why; $c: ${trust_why:-cannot create}"; continue
    fi
  fi
  if [ ! -w "$c" ]; then why="$why; $c: not writable"; continue; fi
  mode=700
  [ -n "$explicit" ] && mode=755        # an explicit cache may be shared: its users read our entries
  tmp=
  n=0
  while [ $n -lt 20 ]; do
    t=$c/.tmp-$rt_key-$host-$$-$n
    if mkdir -m $mode "$t" 2>/dev/null; then tmp=$t; break; fi
    n=$((n + 1))
  done
  if [ -z "$tmp" ]; then why="$why; $c: not writable"; continue; fi
  printf '#!/bin/sh\nexit 0\n' >"$tmp/exec-test" 2>/dev/null && chmod 700 "$tmp/exec-test" 2>/dev/null
  if ! "$tmp/exec-test" 2>/dev/null; then
    rm -rf "$tmp"; why="$why; $c: mounted noexec (or not writable)"; continue
  fi
  rm -f "$tmp/exec-test"
  avail=$(df -Pk "$c" 2>/dev/null | { read -r _; read -r _ _ _ a _; echo "$a"; })
  case $avail in
    ''|*[!0-9]*) ;;
    *) if [ "$avail" -lt "$need_kb" ]; then
         rm -rf "$tmp"; why="$why; $c: only $((avail / 1024)) MB free, the runtime needs $((need_kb / 1024)) MB"
         continue
       fi ;;
  esac
  sha_pid=
  # the digest goes beside the temp dir, never inside what tar writes, in a dir made for it (`mkdir`
  # never follows a planted symlink)
  if [ -n "$check_sha" ] && mkdir -m 700 "${tmp}_sha" 2>/dev/null; then
    { section | sha256sum >"${tmp}_sha/sum" 2>/dev/null; } &
    sha_pid=$!
  fi
  ok=1
  # umask 022: what tar writes is never writable by others, whatever the caller's umask
  part 0 "$first" | { gzip -dc 2>/dev/null; echo $? >"$tmp/.gzip-status"; } | (umask 022 && cd "$tmp" && tar -xf - 2>/dev/null) || ok=
  if [ -n "$sha_pid" ]; then
    wait "$sha_pid"
    got=
    [ -f "${tmp}_sha/sum" ] && read -r got _ <"${tmp}_sha/sum"
    rm -rf "${tmp}_sha"
    if [ -n "$got" ] && [ "$got" != "$rt_sha" ]; then
      rm -rf "$tmp"
      die "$self: corrupted carryon archive (section runtime fails its sha256 check)"
    fi
  fi
  gz=1
  [ -f "$tmp/.gzip-status" ] && read -r gz <"$tmp/.gzip-status"
  rm -f "$tmp/.gzip-status"
  [ "$gz" = 0 ] || [ "$gz" = 2 ] || ok=      # 2: GNU gzip's "trailing garbage ignored" (no head)
  if [ -n "$ok" ] && [ "$rt_gz" -gt 0 ]; then
    uz=1
    part "$rt_gz" $((r_len - rt_gz)) | { "$tmp/_internal/carryon-unzstd" 2>/dev/null; echo $? >"$tmp/.gzip-status"; } |
      (umask 022 && cd "$tmp" && tar -xf - 2>/dev/null) || ok=
    [ -f "$tmp/.gzip-status" ] && read -r uz <"$tmp/.gzip-status"
    rm -f "$tmp/.gzip-status"
    [ "$uz" = 0 ] || ok=
  fi
  if [ -z "$ok" ] || [ ! -f "$tmp/$rt_main" ] || [ ! -f "$tmp/$rt_ld" ] || [ ! -f "$tmp/.carryon-runtime-files" ]; then
    rm -rf "$tmp"
    why="$why; $c: unpacking the runtime failed (disk full or corrupted archive)"
    continue
  fi
  start "$tmp" 0 "$c/$rt_key" "$@"
done
IFS=$IFS_SAVE
die "no usable cache directory for the runtime (need a writable, exec-capable directory with $((need_kb / 1024)) MB free${why:+: ${why#; }}); set CARRYON_CACHE or --carryon-cache (e.g. to node-local scratch)"
exit 125
