# Sourced by the scripts in deploy/: chooses the docker client and the
# compose command, and turns BuildKit on.
#
# The Dockerfile's `RUN --mount` cache mounts need BuildKit. A docker client
# from 23.0 on builds with BuildKit only through its buildx plugin; older
# clients (Debian 12's docker.io, 20.10) have it built in and use it with
# DOCKER_BUILDKIT=1. The first client on PATH that can is put first on PATH,
# so that docker-compose v1, which runs `docker build` for its builds when
# COMPOSE_DOCKER_CLI_BUILD=1, finds it too.
#
# compose_command: `docker compose` (v2) when the client has it, else
# `docker-compose` (v1, 1.29 on Debian 12).
# shellcheck disable=SC2034 # used by the scripts that source this file

export DOCKER_BUILDKIT=1
export COMPOSE_DOCKER_CLI_BUILD=1

docker_builds_with_buildkit() {
    "$1" buildx version >/dev/null 2>&1 && return 0
    local version
    version=$("$1" --version 2>/dev/null | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p')
    [[ -n $version ]] && ((version < 23))
}

docker_client=""
while IFS= read -r candidate; do
    if docker_builds_with_buildkit "$candidate"; then
        docker_client=$candidate
        break
    fi
done < <(type -ap docker)
if [[ -z $docker_client ]]; then
    echo "no docker client on PATH builds with BuildKit: install the buildx plugin, or Debian's docker.io" >&2
    exit 1
fi
PATH="$(dirname "$docker_client"):$PATH"
export PATH

if docker compose version >/dev/null 2>&1; then
    compose_command=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose_command=(docker-compose)
else
    echo "neither \`docker compose\` (v2) nor docker-compose (v1) is installed" >&2
    exit 1
fi

if ! docker info >/dev/null 2>&1; then
    echo "the Docker engine does not answer ($docker_client info); is dockerd running?" >&2
    exit 1
fi
