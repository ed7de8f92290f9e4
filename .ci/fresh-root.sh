#!/usr/bin/env bash
# The fresh-machine check: the README's two commands, and the Dockerfile's builder stage, on a
# minimal Debian bookworm with nothing installed beforehand, from a clean clone of HEAD.
#
#   bash .ci/fresh-root.sh [STAGE...]     # as root; default (what .ci/run runs): demo+bench test image
#
# Stages, each in its own fresh copy of the root (join them with + to run them one after the
# other in the same copy, as one user would: demo+bench reuses the demo's release build):
#   demo    ./scripts/demo.sh, as written in the README
#   test    ./scripts/test.sh, as written in the README (the full test suite)
#   image   the Dockerfile's builder stage: its WORKDIR, COPY and RUN lines as written
#           (.ci/dockerfile-builder.py), with the build context .dockerignore lets through
#   bench   scripts/deps.sh bench && ELECTOR_BENCH_QUICK=1 cargo bench --bench elector
#
# The root is `debootstrap --variant=minbase` plus curl and ca-certificates, what a new user
# has after fetching rustup; deliberately no C compiler, no protoc, no Python, no Go, so every
# one of them must come from scripts/deps.sh. It is built once from the Debian mirror apt uses
# on this machine and cached outside the clone in $ELECTOR_CI_CACHE (default
# /var/cache/etcd-elector-ci), keyed by what is in it. Into each copy go: a clean clone of
# HEAD (committed files only) at /root/etcd-elector, this machine's /etc/resolv.conf and
# trusted CA certificates (and the CA and proxy variables of this environment, if set), and
# /etc/hosts. Each stage runs chrooted in its own mount and PID namespaces (unshare), with
# /proc, /sys, /dev and a private /dev/shm mounted, and this machine's rustup directory
# mounted read-only at /root/.rustup with the toolchain's own bin directory on PATH
# (CARGO_HOME=/root/.cargo is writable and starts empty: crates come from crates.io). The
# mounts live only in that namespace: they end with the stage, whatever happens.
#
# Exits 1 when any stage fails; prints each stage's duration.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(demo+bench test image)
for s in "${stages[@]}"; do
  for part in ${s//+/ }; do
    case $part in demo | test | image | bench) ;; *)
      echo "fresh-root: unknown stage '$part' (demo, test, image, bench; joined with +)" >&2
      exit 2
      ;;
    esac
  done
done
if [ "$(id -u)" -ne 0 ]; then
  echo "fresh-root: run as root (debootstrap, chroot and mounts need it)" >&2
  exit 1
fi

suite=bookworm
include=curl,ca-certificates
recipe=1 # bump when the way the pristine root is made changes
cache=${ELECTOR_CI_CACHE:-/var/cache/etcd-elector-ci}
work=${ELECTOR_CI_WORK:-/var/tmp/etcd-elector-ci}
mkdir -p "$cache" "$work"
exec 9>"$work/.lock"
if ! flock -n 9; then
  echo "fresh-root: another run holds $work/.lock (set ELECTOR_CI_WORK to run beside it)" >&2
  exit 1
fi

# --- removing a root copy: never through a mount --------------------------------------------
mounts_under() { findmnt -rn -o TARGET | awk -v d="$1" 'index($0, d "/") == 1 || $0 == d'; }
remove_root() {
  local dir=$1
  [ -n "$dir" ] && [ -d "$dir" ] || return 0
  if [ -n "$(mounts_under "$dir")" ]; then
    mounts_under "$dir" | sort -r | while read -r m; do umount -l "$m" || true; done
  fi
  if [ -n "$(mounts_under "$dir")" ]; then
    echo "fresh-root: $dir still has mounts; not removing it:" >&2
    mounts_under "$dir" >&2
    return 1
  fi
  rm -rf --one-file-system "$dir"
}
current=""
child=""
# shellcheck disable=SC2329 # called by the EXIT trap
on_exit() {
  # unshare ignores SIGINT and SIGTERM while it waits; SIGKILL ends it, and --kill-child
  # then ends the namespace's PID 1, and so every process of the stage.
  if [ -n "$child" ]; then kill -KILL "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; fi
  remove_root "$current" || true
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Copies left by an interrupted run.
for old in "$work"/*; do [ -e "$old" ] && remove_root "$old"; done

# --- the pristine root, cached ----------------------------------------------------------------
sources_uris() {
  sed -n -e 's/^URIs:[[:space:]]*//p' \
    -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\{0,1\}\([^[:space:]]\+\).*/\2/p' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
    tr ' ' '\n'
}
mirror=$(sources_uris | grep -m1 -E '^https?://.*/debian/?$' || true)
security=$(sources_uris | grep -m1 -E '^https?://.*/debian-security/?$' || true)
if [ -z "$mirror" ]; then
  echo "fresh-root: no Debian mirror (.../debian) in /etc/apt/sources.list*" >&2
  exit 1
fi
arch=$(dpkg --print-architecture)
key=$(printf '%s\n' "$recipe" "$suite" minbase "$include" "$mirror" "$security" "$arch" | sha256sum | cut -c1-12)
pristine=$cache/$suite-minbase-$key.tar.zst

need_host=()
command -v debootstrap >/dev/null || need_host+=(debootstrap)
command -v zstd >/dev/null || need_host+=(zstd)
command -v python3 >/dev/null || need_host+=(python3) # .ci/dockerfile-builder.py
if [ ${#need_host[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_host[@]}" >/dev/null
fi

if [ ! -s "$pristine" ]; then
  t0=$SECONDS
  echo "== fresh-root: building $pristine ($suite minbase + $include, from $mirror)"
  current=$(mktemp -d "$work/pristine.XXXXXX")
  if ! debootstrap --variant=minbase --include="$include" "$suite" "$current/root" "$mirror" >"$current/log" 2>&1; then
    tail -20 "$current/log" >&2
    exit 1
  fi
  rm -f "$current/root/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" "$suite" "$suite"
    if [ -n "$security" ]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$security" "$suite"
    fi
  } >"$current/root/etc/apt/sources.list.d/debian.sources"
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$current/root/etc/hosts"
  chroot "$current/root" apt-get clean
  tar -C "$current/root" --numeric-owner -cpf - . | zstd -q -T0 -o "$pristine.tmp"
  mv "$pristine.tmp" "$pristine"
  remove_root "$current"
  current=""
  echo "== fresh-root: pristine root built in $((SECONDS - t0)) s"
fi

# --- the toolchain, mounted read-only --------------------------------------------------------
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
sysroot=$(cd "$repo" && rustc --print sysroot)
case $sysroot in "$rustup_home"/toolchains/*) ;; *)
  echo "fresh-root: the toolchain ($sysroot) is not under RUSTUP_HOME ($rustup_home)" >&2
  exit 1
  ;;
esac
toolchain=${sysroot#"$rustup_home"/toolchains/}
head=$(git -C "$repo" rev-parse HEAD)

# Runs inside `unshare --mount --pid --fork`: mounts (private to this namespace), then the
# stage's command chrooted, as a child so that this shell stays PID 1 of the namespace.
# shellcheck disable=SC2016 # expanded by the inner shell
inner='
set -euo pipefail
root=$1 rustup=$2 cmd=$3; shift 3
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$root/dev/shm"
mkdir -p "$root/root/.rustup"
mount --bind "$rustup" "$root/root/.rustup"
mount -o remount,bind,ro "$root/root/.rustup"
chroot "$root" /usr/bin/env -i "$@" /bin/bash -c "cd /root/etcd-elector && $cmd"
exit 0
'

env_in=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 TERM="${TERM:-dumb}"
  PATH="/root/.rustup/toolchains/$toolchain/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  RUSTUP_HOME=/root/.rustup RUSTUP_TOOLCHAIN="$toolchain" CARGO_HOME=/root/.cargo)
for v in SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE PIP_CERT REQUESTS_CA_BUNDLE \
  http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  if [ -n "${!v:-}" ]; then env_in+=("$v=${!v}"); fi
done

command_of() {
  case $1 in
  demo) echo "./scripts/demo.sh" ;;
  test) echo "./scripts/test.sh" ;;
  image) echo "bash /root/dockerfile-builder.sh && /usr/local/bin/etcd-elector --version" ;;
  bench) echo "scripts/deps.sh bench && ELECTOR_BENCH_QUICK=1 cargo bench --bench elector" ;;
  esac
}

run_stage() {
  local stage=$1 cmd="" part
  for part in ${stage//+/ }; do
    cmd="${cmd:+$cmd && }$(command_of "$part")"
  done
  current=$(mktemp -d "$work/${stage//+/-}.XXXXXX")
  local root=$current/root
  # (set -e does not apply inside a function called from `if`: every step checks itself.)
  mkdir "$root" || return 1
  zstd -dcq "$pristine" | tar -C "$root" --numeric-owner -xpf - || return 1
  git clone -q --no-hardlinks "$repo" "$root/root/etcd-elector" || return 1
  git -C "$root/root/etcd-elector" checkout -q --detach "$head" || return 1
  cp -L /etc/resolv.conf "$root/etc/resolv.conf" || return 1
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt" || return 1
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp -L /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" || return 1
  fi
  if [[ "+$stage+" == *+image+* ]]; then
    mkdir "$root/root/docker-context" || return 1
    (cd "$root/root/etcd-elector" &&
      python3 .ci/dockerfile-builder.py "$root/root/docker-context" /root/docker-context <Dockerfile) \
      >"$root/root/dockerfile-builder.sh" || return 1
  fi
  echo "== fresh-root: $stage (commit ${head:0:12}, toolchain $toolchain): $cmd"
  unshare --mount --pid --fork --kill-child --propagation private \
    /bin/bash -c "$inner" inner "$root" "$rustup_home" "$cmd" "${env_in[@]}" &
  child=$!
  local rc=0
  wait "$child" || rc=$?
  child=""
  remove_root "$current" || rc=1
  current=""
  return "$rc"
}

summary=()
failed=0
for stage in "${stages[@]}"; do
  t0=$SECONDS
  if run_stage "$stage"; then result=passed; else
    result="FAILED (exit $?)"
    failed=1
  fi
  summary+=("$(printf '%-10s %-16s %5d s' "$stage" "$result" $((SECONDS - t0)))")
  echo "== fresh-root: $stage $result in $((SECONDS - t0)) s"
done
echo "== fresh-root summary (minimal $suite, commit ${head:0:12})"
printf '   %s\n' "${summary[@]}"
exit "$failed"
