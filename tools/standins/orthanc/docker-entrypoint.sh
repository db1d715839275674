#!/bin/sh
# Stand-in entrypoint (see Dockerfile): write the merged configuration to
# the file named by the first argument, then run Orthanc with the arguments.
set -e
python3 /usr/local/share/dpp-standin/configure.py "${1:-/tmp/orthanc.json}"
exec /usr/sbin/Orthanc "$@"
