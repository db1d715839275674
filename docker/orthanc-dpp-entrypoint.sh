#!/bin/sh
# Entrypoint of the Orthanc DPP image: puts the HTTP password from a file
# (a Docker secret) where the Orthanc team's entrypoint looks for it, then
# hands over to that entrypoint, given as the arguments.
#
#   ORTHANC_PASSWORD_FILE=/run/secrets/orthanc-password
#       the file's content, less its trailing newlines, becomes
#       ORTHANC_PASSWORD (the password of the HTTP user "orthanc"), so the
#       password is not in the container's configuration (docker inspect).
#
# Setting both ORTHANC_PASSWORD and ORTHANC_PASSWORD_FILE, or naming a file
# that cannot be read or is empty, stops the container with a message that
# says which. Setting neither leaves the users to the image's configuration
# (RegisteredUsers); the image refuses to start if there are none.
set -eu

me=orthanc-dpp-entrypoint

fail() {
  printf '%s: %s\n' "$me" "$*" >&2
  exit 64
}

[ "$#" -gt 0 ] || fail "usage: $me COMMAND [ARGUMENT...] (the command to run, e.g. /docker-entrypoint.sh)"

if [ -n "${ORTHANC_PASSWORD_FILE:-}" ]; then
  if [ -n "${ORTHANC_PASSWORD:-}" ]; then
    fail "both ORTHANC_PASSWORD and ORTHANC_PASSWORD_FILE are set: set only one"
  fi
  [ -f "$ORTHANC_PASSWORD_FILE" ] ||
    fail "ORTHANC_PASSWORD_FILE=$ORTHANC_PASSWORD_FILE: no such file (is the secret mounted?)"
  [ -r "$ORTHANC_PASSWORD_FILE" ] ||
    fail "ORTHANC_PASSWORD_FILE=$ORTHANC_PASSWORD_FILE: not readable by uid $(id -u) (make it readable by this user)"
  ORTHANC_PASSWORD=$(cat "$ORTHANC_PASSWORD_FILE")
  [ -n "$ORTHANC_PASSWORD" ] || fail "ORTHANC_PASSWORD_FILE=$ORTHANC_PASSWORD_FILE is empty"
  export ORTHANC_PASSWORD
  unset ORTHANC_PASSWORD_FILE
fi

exec "$@"
