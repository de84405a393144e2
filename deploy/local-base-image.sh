#!/usr/bin/env bash
# Build HGO's container base image from Debian packages, for machines that cannot reach
# Docker Hub (docs/operations.md, "Without Docker Hub"). The normal path needs none of
# this: deploy/Dockerfile pulls its pinned python image.
#
#   deploy/local-base-image.sh [--tag NAME] [--mirror URL] [--suite SUITE]
#                              [--prometheus NAME] [--rootfs-cache FILE]
#
# 1. debootstrap --variant=minbase a Debian root with python3, venv, pip, ca-certificates;
# 2. copy this machine's CA bundle into it (pip inside the image build must trust the same
#    certificates this machine uses to reach its package index);
# 3. docker import it as NAME (default hgo-python:bookworm-local);
# 4. with --prometheus NAME, also build deploy/prometheus.Dockerfile (Debian's prometheus
#    package) on that base, for docker-compose.yml's PROMETHEUS_IMAGE.
# Then: PYTHON_IMAGE=NAME [PROMETHEUS_IMAGE=...] docker compose up --build
#
# The mirror defaults to the first Debian URI in /etc/apt/sources.list(.d) (the mirror this
# machine's apt already uses), else http://deb.debian.org/debian. --rootfs-cache FILE keeps
# the debootstrap result as a tarball and reuses it when present (CI keeps it inside its
# clone). Needs root, debootstrap and a running Docker daemon.
set -euo pipefail

tag=hgo-python:bookworm-local
suite=bookworm
mirror=
prometheus=
cache=
ca_bundle=/etc/ssl/certs/ca-certificates.crt
here="$(cd "$(dirname "$0")" && pwd)"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "local-base-image.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag="${2:?--tag needs a NAME}"; shift 2 ;;
        --suite) suite="${2:?--suite needs a SUITE}"; shift 2 ;;
        --mirror) mirror="${2:?--mirror needs a URL}"; shift 2 ;;
        --prometheus) prometheus="${2:?--prometheus needs a NAME}"; shift 2 ;;
        --rootfs-cache) cache="${2:?--rootfs-cache needs a FILE}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (expected --tag, --suite, --mirror, --prometheus, --rootfs-cache; see --help)" ;;
    esac
done

apt_mirror() {
    # deb822 "URIs: http://.../debian" or one-line "deb [opts] http://.../debian suite ...";
    # the first URI whose path ends in /debian (not -security, not a third-party repo).
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | sed -n -E 's/^URIs:[[:space:]]*//p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
        | tr ' ' '\n' | grep -E '^https?://[^[:space:]]+/debian/?$' | head -n1 || true
}

[ -n "$mirror" ] || mirror="$(apt_mirror)"
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
[ "$(id -u)" = 0 ] || die "debootstrap needs root (run as root or with sudo)"
command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
command -v docker >/dev/null || die "docker not found (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "no Docker daemon answers (start dockerd first)"
[ -r "$ca_bundle" ] || die "CA bundle $ca_bundle not readable (apt-get install ca-certificates)"

work="$(mktemp -d "${TMPDIR:-/tmp}/hgo-base.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"
started=$(date +%s)

if [ -n "$cache" ] && [ -s "$cache" ]; then
    echo "rootfs from cache $cache"
    mkdir -p "$root" && tar -C "$root" -xf "$cache"
else
    echo "debootstrap $suite from $mirror"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
        "$suite" "$root" "$mirror" > "$work/debootstrap.log" 2>&1 \
        || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap $suite $mirror failed (log above)"; }
    # the image does not need apt's downloaded lists and packages
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
    if [ -n "$cache" ]; then
        mkdir -p "$(dirname "$cache")"
        tar -C "$root" -cf "$cache.tmp" . && mv "$cache.tmp" "$cache"
    fi
fi
cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"

tar -C "$root" -c . | docker import \
    --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "hgo base: debootstrap $suite from $mirror" - "$tag" >/dev/null
echo "imported $tag ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'), $(( $(date +%s) - started )) s)"
docker run --rm "$tag" python -c 'import ssl, sys, venv; print("python", sys.version.split()[0])'

if [ -n "$prometheus" ]; then
    docker build --quiet --force-rm -f "$here/prometheus.Dockerfile" --build-arg "BASE_IMAGE=$tag" -t "$prometheus" "$here" >/dev/null
    echo "built $prometheus ($(docker image inspect --format '{{.Size}}' "$prometheus" | awk '{printf "%.0f MB", $1/1e6}'))"
fi
