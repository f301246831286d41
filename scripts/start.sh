#!/usr/bin/env bash
# Start the msting LLM service and wait until it is ready: pre-flight checks
# (`msting llm doctor`), `msting llm start` (waits for ready), and with PROFILE a switch
# to it (`msting llm switch-profile`, which waits until the new profile serves).
#
#   scripts/start.sh [--skip-checks] [PROFILE]
#
# Environment: MSTING (the msting command; default: `msting` on PATH, else this
# checkout's .venv/bin/msting), MSTING_HOME (as for msting itself).
# Exit status: 0 ready; otherwise that of the step that failed (doctor 1; start or
# switch-profile 1 failed, 2 config error, 3 timed out); 2 for a usage error.
set -euo pipefail

usage() {
    sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

SKIP_CHECKS=0
PROFILE=""
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --skip-checks) SKIP_CHECKS=1; shift ;;
        -*) printf 'start.sh: unknown option: %s\n\n' "$1" >&2; usage >&2; exit 2 ;;
        *)
            if [[ -n $PROFILE ]]; then
                printf 'start.sh: one PROFILE only (got %s and %s)\n\n' "$PROFILE" "$1" >&2
                usage >&2
                exit 2
            fi
            PROFILE="$1"
            shift
            ;;
    esac
done

# shellcheck source=scripts/msting_command.sh
. "$(dirname "${BASH_SOURCE[0]}")/msting_command.sh"

if ((!SKIP_CHECKS)); then
    echo "==> pre-flight checks: msting llm doctor"
    status=0
    "${MSTING[@]}" llm doctor || status=$?
    if ((status != 0)); then
        printf '\nstart.sh: a pre-flight check failed (exit %d); fix it as shown above, or start anyway with --skip-checks\n' "$status" >&2
        exit "$status"
    fi
fi

echo "==> msting llm start"
"${MSTING[@]}" llm start
if [[ -n $PROFILE ]]; then
    echo "==> msting llm switch-profile $PROFILE"
    "${MSTING[@]}" llm switch-profile "$PROFILE"
fi
