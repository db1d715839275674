#!/usr/bin/env bash
# Smoke test of the Docker image, for a machine where Docker runs.
#
#   docker/smoke.sh               one Orthanc node + PostgreSQL
#   docker/smoke.sh --scale-out   two nodes on one database: store through A,
#                                 find and retrieve through B
#   docker/smoke.sh --keep        leave the containers running afterwards
#
# Builds the image, starts docker/compose.yaml under its own project name
# (orthanc-dpp-smoke) on loopback ports 18042/14242/21112 (node B: 18043/
# 14243/21113; override with ORTHANC_A_HTTP_PORT etc.), with fresh random
# passwords given as Docker secrets, and with docker/compose.smoke.yaml
# declaring the smoke client as a modality that may echo, store and find
# (no service is opened to unknown callers). Waits until Docker
# reports every node healthy (the image's HEALTHCHECK: /dpp/status says the
# DPP listener runs), then C-ECHOes, stores a CT protocol, finds it (REST;
# C-FIND once the listener offers it) and retrieves it, comparing it element
# for element with what was sent. Tears everything down, volumes included.
#
# Needs: docker with the compose plugin, and a python3 with pydicom and
# pynetdicom (this checkout's .venv from `make test` is used when present).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
project=orthanc-dpp-smoke
scale_out=false
keep=false
healthy_within=${SMOKE_HEALTHY_WITHIN:-300}

for argument in "$@"; do
  case $argument in
    --scale-out) scale_out=true ;;
    --keep) keep=true ;;
    -h | --help)
      sed -n '2,/^set /{/^#/p;}' "$0"
      exit 0
      ;;
    *)
      echo "smoke: unknown argument '$argument' (see --help)" >&2
      exit 2
      ;;
  esac
done

say() { echo "smoke: $*"; }
fail() {
  echo "smoke: FAILED: $*" >&2
  exit 1
}

command -v docker >/dev/null || fail "docker is not installed"
docker compose version >/dev/null 2>&1 || fail "the docker compose plugin is missing"
docker info >/dev/null 2>&1 || fail "no Docker engine answers (is the daemon running, may you use it?)"

python=${PYTHON:-}
if [[ -z $python ]]; then
  if [[ -x $repo/.venv/bin/python ]]; then python=$repo/.venv/bin/python; else python=python3; fi
fi
"$python" -c 'import pydicom, pynetdicom' 2>/dev/null ||
  fail "$python lacks pydicom/pynetdicom: run 'make test' once, or set PYTHON"

# Passwords for this run only, as the secret files compose.yaml requires.
# mktemp makes the folder 0700, so only we can reach the files; the files
# themselves are 0444 because compose mounts them as they are and Orthanc
# reads them as uid 999. The prefix keeps them from reading as JSON numbers.
secrets=$(mktemp -d "${TMPDIR:-/tmp}/orthanc-dpp-smoke.XXXXXX")
for name in orthanc-password postgres-password; do
  printf 'smoke-%s\n' "$("$python" -c 'import secrets; print(secrets.token_hex(16))')" >"$secrets/$name"
  chmod 0444 "$secrets/$name"
done
export ORTHANC_PASSWORD_FILE=$secrets/orthanc-password
export POSTGRES_PASSWORD_FILE=$secrets/postgres-password
export DPP_PUBLISH_ADDRESS=127.0.0.1
export ORTHANC_HTTP_PUBLISH_ADDRESS=127.0.0.1
export ORTHANC_DICOM_PUBLISH_ADDRESS=127.0.0.1
# Stated, not unset: a docker/.env beside compose.yaml could set it otherwise.
export DPP_UNKNOWN_CALLERS=Orthanc
export ORTHANC_A_HTTP_PORT=${ORTHANC_A_HTTP_PORT:-18042}
export ORTHANC_A_DICOM_PORT=${ORTHANC_A_DICOM_PORT:-14242}
export ORTHANC_A_DPP_PORT=${ORTHANC_A_DPP_PORT:-21112}
export ORTHANC_B_HTTP_PORT=${ORTHANC_B_HTTP_PORT:-18043}
export ORTHANC_B_DICOM_PORT=${ORTHANC_B_DICOM_PORT:-14243}
export ORTHANC_B_DPP_PORT=${ORTHANC_B_DPP_PORT:-21113}

compose=(docker compose --project-name "$project" --file "$here/compose.yaml" --file "$here/compose.smoke.yaml")
services=(orthanc-a)
nodes=(--node "A=127.0.0.1:$ORTHANC_A_HTTP_PORT:$ORTHANC_A_DPP_PORT")
if $scale_out; then
  compose+=(--profile scale-out)
  services+=(orthanc-b)
  nodes+=(--node "B=127.0.0.1:$ORTHANC_B_HTTP_PORT:$ORTHANC_B_DPP_PORT")
fi

finish() {
  local status=$?
  if ((status != 0)); then
    say "last log lines of the containers:"
    "${compose[@]}" logs --no-color --tail 60 >&2 || true
  fi
  if $keep; then
    say "containers kept (--keep); their passwords are in $secrets"
    say "remove them with: ORTHANC_PASSWORD_FILE=$ORTHANC_PASSWORD_FILE POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE ${compose[*]} down --volumes; rm -r $secrets"
  else
    say "tearing down"
    "${compose[@]}" down --volumes --remove-orphans >/dev/null 2>&1 || true
    rm -rf -- "$secrets"
  fi
  if ((status == 0)); then say "PASSED"; else say "FAILED (exit status $status)"; fi
}
trap finish EXIT

say "building the image and starting ${services[*]} + postgres (project $project)"
"${compose[@]}" up --detach --build

for service in "${services[@]}"; do
  container=$("${compose[@]}" ps --quiet "$service")
  [[ -n $container ]] || fail "$service did not start"
  deadline=$((SECONDS + healthy_within))
  while true; do
    health=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$container")
    case $health in
      healthy) break ;;
      unhealthy) fail "$service is unhealthy: $(docker inspect --format '{{range .State.Health.Log}}{{.Output}}{{end}}' "$container" | tail -n 3)" ;;
      none) fail "$service has no health check (is the image built from docker/Dockerfile?)" ;;
    esac
    ((SECONDS < deadline)) || fail "$service not healthy within ${healthy_within} s (last state: $health)"
    sleep 2
  done
  say "$service is healthy"
done

if command -v echoscu >/dev/null; then
  echoscu -aec ORTHANC_DPP 127.0.0.1 "$ORTHANC_A_DPP_PORT" || fail "DCMTK echoscu to node A failed"
  say "DCMTK echoscu to node A: Success"
fi

"$python" "$here/smoke_dicom.py" "${nodes[@]}" --user orthanc --password-file "$ORTHANC_PASSWORD_FILE"
