# Sourced by the operator scripts: sets the array MSTING to the msting command.
# $MSTING wins; then `msting` on PATH; then this checkout's virtualenv.
if [[ -n ${MSTING:-} ]]; then
    read -r -a MSTING <<<"$MSTING"
elif command -v msting >/dev/null 2>&1; then
    MSTING=(msting)
elif [[ -x "$(dirname "${BASH_SOURCE[0]}")/../.venv/bin/msting" ]]; then
    MSTING=("$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/msting")
else
    printf '%s: the msting command was not found: install it (./install.sh) or set MSTING=/path/to/msting\n' "$(basename "$0")" >&2
    exit 1
fi
