#!/usr/bin/env bash
# Builds and runs the services' container images (deploy/Containerfile) with Podman or Docker.
#
#   scripts/container.sh build SERVICE [MODEL_DIR]  cargo build --release -p SERVICE, then the
#                                                   image SERVICE:latest; MODEL_DIR's weights
#                                                   baked in when given (else mount them at /model)
#   scripts/container.sh run SERVICE [ARGS...]      runs SERVICE:latest in the foreground on
#                                                   $PORT (8080); ARGS go to `run` before the
#                                                   image, e.g. -v /path/to/model:/model:ro
#   scripts/container.sh base                       makes the base image from Debian's packages
#                                                   (debootstrap), for machines that reach no
#                                                   image registry
#
# Environment: ENGINE (podman or docker; default podman where installed), ENGINE_ARGS (flags
# every build and run gets, e.g. "--runtime runc --network host"), PREBUILT=1 (use
# target/release/SERVICE as it is, without cargo), PORT.
set -euo pipefail
cd "$(dirname "$0")/.."

base_image=docker.io/library/debian:bookworm-slim
engine=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
read -r -a engine_args <<<"${ENGINE_ARGS:-}"

usage() {
    sed -n '2,17p' "$0" >&2
    exit 2
}

service_name() {
    case "${1:-}" in
        classifier | textgen) echo "$1" ;;
        *) echo "error: the service is classifier or textgen, not '${1:-}'" >&2; exit 2 ;;
    esac
}

has_image() {
    "$engine" image inspect "$1" >/dev/null 2>&1
}

# The base image from Debian's own packages: debootstrap's minimal variant, imported under the
# name the Containerfile uses (its files stage only needs a shell, cp and ldd).
make_base() {
    command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (Debian: apt-get install debootstrap)" >&2; exit 1; }
    local rootfs
    rootfs=$(mktemp -d "${TMPDIR:-/tmp}/container-base.XXXXXX")
    echo "== making $base_image with debootstrap --variant=minbase bookworm" >&2
    if ! debootstrap --variant=minbase bookworm "$rootfs" >"$rootfs.log" 2>&1; then
        tail -20 "$rootfs.log" >&2
        rm -rf "$rootfs" "$rootfs.log"
        exit 1
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs.log"
    tar -C "$rootfs" -c . | "$engine" import - "$base_image" >/dev/null
    rm -rf "$rootfs"
}

ensure_base() {
    has_image "$base_image" && return
    if timeout 120 "$engine" pull "$base_image" >/dev/null 2>&1; then return; fi
    echo "== $base_image cannot be pulled here; making it locally" >&2
    make_base
}

build() {
    local service model_dir=${2:-}
    service=$(service_name "${1:-}")
    if [ "${PREBUILT:-0}" != 1 ]; then
        cargo build --release -p "$service"
    fi
    [ -x "target/release/$service" ] || { echo "error: target/release/$service is missing" >&2; exit 1; }
    local build_args=(--build-arg "SERVICE=$service")
    if [ -n "$model_dir" ]; then
        # Baked weights must be inside the build context: staged under target/ (hard links
        # where the file system allows, else copies).
        local staged="target/container-model/$service"
        rm -rf "$staged" && mkdir -p "$staged"
        cp -rL --link "$model_dir"/. "$staged"/ 2>/dev/null ||
            { rm -rf "$staged" && mkdir -p "$staged" && cp -rL "$model_dir"/. "$staged"/; }
        build_args+=(--build-arg "MODEL_DIR=$staged")
    fi
    ensure_base
    local format=()
    # Podman's default image format (OCI) has no HEALTHCHECK; Docker's has.
    [ "$(basename "$engine")" = podman ] && format=(--format docker)
    "$engine" build "${engine_args[@]}" "${format[@]}" -f deploy/Containerfile "${build_args[@]}" -t "$service:latest" .
    "$engine" image inspect "$service:latest" --format "$service:latest {{.Size}} bytes" >&2
}

run() {
    local service port=${PORT:-8080}
    service=$(service_name "${1:-}")
    shift
    exec "$engine" run --rm "${engine_args[@]}" -e "PORT=$port" -p "$port:$port" "$@" "$service:latest"
}

case "${1:-}" in
    build) shift; build "$@" ;;
    run) shift; run "$@" ;;
    base) make_base ;;
    *) usage ;;
esac
