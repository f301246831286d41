#!/usr/bin/env bash
# Install msting from this source tree into its own virtualenv, link `msting` into
# ~/.local/bin, and run `msting llm install` (which starts the daemon and proves that
# the model generates). Safe to re-run: it upgrades the venv in place.
#
#   ./install.sh [--prefix DIR] [--model PATH] [--no-start] [--service]
#
# Environment: PYTHON (the interpreter to build the venv with; default: the newest
# python3.x >= 3.10 found), MSTING_HOME (moves every msting directory under one root).
set -euo pipefail

MIN_PY_MAJOR=3
MIN_PY_MINOR=10
SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX="${XDG_DATA_HOME:-$HOME/.local/share}/msting/venv"
BIN_DIR="$HOME/.local/bin"
MODEL=""
NO_START=0
SERVICE=0

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<EOF
Usage: ./install.sh [--prefix DIR] [--model PATH] [--no-start] [--service]

Installs msting into a virtualenv and runs \`msting llm install\`.

Options:
  --prefix DIR   virtualenv to install into (default: \${XDG_DATA_HOME:-\$HOME/.local/share}/msting/venv)
  --model PATH   a GGUF model file to serve (default: the built-in test model)
  --no-start     prepare dependencies, config and model, but do not start the daemon
  --service      then run the daemon under the init system: \`msting llm service install\`
                 (a systemd user unit on Linux, a launchd agent on macOS), started unless --no-start
  -h, --help     show this help

Environment: PYTHON=/path/to/python3 picks the interpreter (Python >= ${MIN_PY_MAJOR}.${MIN_PY_MINOR}).
Exit status: that of \`msting llm install\` (0 ready, 1 failed, 2 usage/config error, 3 timed out),
then with --service that of \`msting llm service install\`.
EOF
}

while (($#)); do
    case "$1" in
        --prefix)
            (($# >= 2)) || die "--prefix needs a directory"
            PREFIX="$2"
            shift 2
            ;;
        --prefix=*)
            PREFIX="${1#*=}"
            shift
            ;;
        --model)
            (($# >= 2)) || die "--model needs a path"
            MODEL="$2"
            shift 2
            ;;
        --model=*)
            MODEL="${1#*=}"
            shift
            ;;
        --no-start)
            NO_START=1
            shift
            ;;
        --service)
            SERVICE=1
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            printf '\nerror: unknown argument: %s\n' "$1" >&2
            exit 2
            ;;
    esac
done

[[ -n $PREFIX ]] || die "--prefix must not be empty"
case "$PREFIX" in
    /*) ;;
    *) PREFIX="$PWD/$PREFIX" ;;
esac
if [[ -n $MODEL ]]; then
    case "$MODEL" in
        builtin:*) ;;
        *)
            [[ -f $MODEL ]] || die "--model: no such file: $MODEL"
            MODEL="$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")"
            ;;
    esac
fi

# --- Python ------------------------------------------------------------------------

py_ok() {
    "$1" -c "import sys; sys.exit(0 if sys.version_info >= (${MIN_PY_MAJOR}, ${MIN_PY_MINOR}) else 1)" 2>/dev/null
}

find_python() {
    local candidate
    if [[ -n ${PYTHON:-} ]]; then
        command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON: no such command"
        py_ok "$PYTHON" || die "PYTHON=$PYTHON is $("$PYTHON" -V 2>&1 || echo "not a working Python"); msting needs Python >= ${MIN_PY_MAJOR}.${MIN_PY_MINOR}"
        command -v "$PYTHON"
        return
    fi
    for candidate in python3.14 python3.13 python3.12 python3.11 python3.10 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && py_ok "$candidate"; then
            command -v "$candidate"
            return
        fi
    done
    local found="no python3 on PATH"
    if command -v python3 >/dev/null 2>&1; then
        found="python3 is $(python3 -V 2>&1)"
    fi
    die "msting needs Python >= ${MIN_PY_MAJOR}.${MIN_PY_MINOR}, but ${found}. Install a newer Python (e.g. apt install python3.11 python3.11-venv), or set PYTHON=/path/to/python3."
}

PY="$(find_python)"
say "using $("$PY" -V 2>&1) ($PY)"

# --- virtualenv --------------------------------------------------------------------

VENV_PY="$PREFIX/bin/python"
if [[ -x $VENV_PY ]]; then
    py_ok "$VENV_PY" ||
        die "$PREFIX is a virtualenv with $("$VENV_PY" -V 2>&1), too old for msting; remove it or choose another --prefix"
    say "upgrading the existing virtualenv $PREFIX"
else
    if [[ -e $PREFIX && ! -d $PREFIX ]]; then
        die "$PREFIX exists and is not a directory"
    fi
    if [[ -d $PREFIX && -n "$(ls -A "$PREFIX")" ]]; then
        die "$PREFIX is not empty and is not a virtualenv; choose another --prefix"
    fi
    say "creating a virtualenv in $PREFIX"
    mkdir -p "$(dirname "$PREFIX")"
    "$PY" -m venv "$PREFIX" ||
        die "could not create a virtualenv with $PY (on Debian/Ubuntu: apt install python3-venv)"
fi

say "installing msting from $SRC_DIR"
if ! "$VENV_PY" -c 'import llama_cpp' >/dev/null 2>&1; then
    say "llama-cpp-python will be built from source: this takes several minutes (about 10 on 2 cores)"
fi
"$VENV_PY" -m pip install --disable-pip-version-check --upgrade "$SRC_DIR" ||
    die "pip could not install msting into $PREFIX (see the output above)"

# --- the msting command ------------------------------------------------------------

MSTING="$PREFIX/bin/msting"
[[ -x $MSTING ]] || die "the install did not create $MSTING"
mkdir -p "$BIN_DIR"
LINK="$BIN_DIR/msting"
if [[ -e $LINK && ! -L $LINK ]]; then
    warn "$LINK exists and is not a symlink; leaving it alone (msting is at $MSTING)"
else
    ln -sfn "$MSTING" "$LINK"
    say "linked $LINK -> $MSTING"
fi
case ":${PATH}:" in
    *":$BIN_DIR:"*) ;;
    *) warn "$BIN_DIR is not on your PATH; add it, e.g.: echo 'export PATH=\"\$HOME/.local/bin:\$PATH\"' >> ~/.bashrc" ;;
esac

# Shell completions (best effort; zsh needs a directory on $fpath, see completions/_msting).
BASH_COMP_DIR="${XDG_DATA_HOME:-$HOME/.local/share}/bash-completion/completions"
if mkdir -p "$BASH_COMP_DIR" 2>/dev/null; then
    cp "$SRC_DIR/completions/msting.bash" "$BASH_COMP_DIR/msting" 2>/dev/null || true
fi
if command -v fish >/dev/null 2>&1; then
    FISH_COMP_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/fish/completions"
    mkdir -p "$FISH_COMP_DIR" && cp "$SRC_DIR/completions/msting.fish" "$FISH_COMP_DIR/" || true
fi

# --- msting llm install ------------------------------------------------------------

args=(llm install)
[[ -n $MODEL ]] && args+=(--model "$MODEL")
((NO_START)) && args+=(--no-start)
say "running: msting ${args[*]}"
status=0
"$MSTING" "${args[@]}" || status=$?
if ((status != 0)); then
    printf '\nmsting llm install failed (exit code %d); see the messages above.\n' "$status" >&2
    exit "$status"
fi

# --- msting llm service install ----------------------------------------------------

if ((SERVICE)); then
    service_args=(llm service install)
    if ((NO_START)); then
        service_args+=(--no-start)
    else
        # The daemon install started proved the model; the init system takes over from here.
        say "handing the daemon over to the init system"
        "$MSTING" llm stop || exit $?
    fi
    say "running: msting ${service_args[*]}"
    "$MSTING" "${service_args[@]}" || status=$?
    if ((status != 0)); then
        printf '\nmsting llm service install failed (exit code %d); the daemon can still be run with `msting llm start`.\n' "$status" >&2
    fi
fi
exit "$status"
