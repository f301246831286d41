#!/usr/bin/env bash
# Stop the msting LLM service gracefully: new requests are refused, queued and
# in-flight ones finish (llm_service.drain_grace_sec), the workers stop, and the active
# profile stays saved in the state database for the next start. --force kills at once.
#
#   scripts/stop.sh [--force]
#
# Environment: MSTING (the msting command), MSTING_HOME.
# Exit status: that of `msting llm stop` (0 stopped, or was not running; 1 something
# survived); 2 for a usage error.
set -euo pipefail

usage() {
    sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

args=()
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --force) args+=(--force); shift ;;
        *) printf 'stop.sh: unknown argument: %s\n\n' "$1" >&2; usage >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/msting_command.sh
. "$(dirname "${BASH_SOURCE[0]}")/msting_command.sh"

"${MSTING[@]}" llm stop "${args[@]}"
