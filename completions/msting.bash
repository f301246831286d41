# bash completion for msting                                    -*- shell-script -*-
# Install: copy to ~/.local/share/bash-completion/completions/msting
#          (install.sh does this), or `source` it from ~/.bashrc.

_msting_services() {
    msting llm services --json 2>/dev/null | sed -n 's/^      "name": "\([^"]*\)".*/\1/p'
}

_msting() {
    local cur prev words cword
    if declare -F _init_completion >/dev/null 2>&1; then
        _init_completion || return
    else
        COMPREPLY=()
        cur="${COMP_WORDS[COMP_CWORD]}"
        prev="${COMP_WORDS[COMP_CWORD-1]}"
        words=("${COMP_WORDS[@]}")
        cword=$COMP_CWORD
    fi

    local top_opts="--help -h --version -V"
    local llm_cmds="install start stop restart status wait logs health profiles switch-profile models load unload pull import rm search usage jobs services ping route doctor service"

    # Find the group and the subcommand typed so far.
    local i group="" cmd="" sub=""
    for ((i = 1; i < cword; i++)); do
        case "${words[i]}" in
            -*) ;;
            *)
                if [[ -z $group ]]; then
                    group="${words[i]}"
                elif [[ -z $cmd ]]; then
                    cmd="${words[i]}"
                elif [[ ($cmd == service || $cmd == jobs) && -z $sub ]]; then
                    sub="${words[i]}"
                fi
                ;;
        esac
    done

    if [[ -z $group ]]; then
        COMPREPLY=($(compgen -W "llm $top_opts" -- "$cur"))
        return
    fi
    [[ $group == llm ]] || return

    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "$llm_cmds --help -h" -- "$cur"))
        return
    fi

    case "$prev" in
        --model)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -f -X '!*.gguf' -- "$cur") $(compgen -d -- "$cur"))
            return
            ;;
        --state)
            COMPREPLY=($(compgen -W "queued running succeeded failed cancelled" -- "$cur"))
            return
            ;;
        --type)
            COMPREPLY=($(compgen -W "install import update delete load unload switch" -- "$cur"))
            return
            ;;
        --group-by | -g)
            COMPREPLY=($(compgen -W "service model day client" -- "$cur"))
            return
            ;;
        --timeout | -n | --lines | --sha256 | --name | --limit | --since | --until)
            return
            ;;
        --explain)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -f -X '!*.json' -- "$cur") $(compgen -d -- "$cur"))
            return
            ;;
        --root)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -d -- "$cur"))
            return
            ;;
        --init-system)
            COMPREPLY=($(compgen -W "systemd launchd" -- "$cur"))
            return
            ;;
    esac

    local opts
    case "$cmd" in
        install) opts="--model --no-deps --no-start --timeout --json" ;;
        start) opts="--foreground --timeout --json" ;;
        stop) opts="--force --timeout --json" ;;
        restart) opts="--force --timeout --json" ;;
        status) opts="--json" ;;
        wait) opts="--timeout --json" ;;
        logs) opts="--follow -f --lines -n" ;;
        health) opts="--timeout --json" ;;
        profiles) opts="--json" ;;
        switch-profile) opts="--dry-run --timeout --json" ;;
        models) opts="--json" ;;
        load) opts="--timeout --json" ;;
        unload) opts="--json" ;;
        services) opts="--json" ;;
        doctor) opts="--json" ;;
        pull) opts="--sha256 --name --json" ;;
        import)
            opts="--name --link --json"
            if [[ $cur != -* ]]; then
                compopt -o filenames 2>/dev/null
                COMPREPLY=($(compgen -f -X '!*.gguf' -- "$cur") $(compgen -d -- "$cur"))
                return
            fi
            ;;
        rm) opts="--json" ;;
        search) opts="--limit --json" ;;
        usage) opts="--group-by -g --since --until --json" ;;
        route) opts="--explain --json" ;;
        jobs)
            case "$sub" in
                "") opts="cancel --type --state --json" ;;
                cancel) opts="--json" ;;
                *) return ;;
            esac
            ;;
        service)
            case "$sub" in
                "")
                    COMPREPLY=($(compgen -W "install uninstall status --help -h" -- "$cur"))
                    return
                    ;;
                install) opts="--user --system --dry-run --no-start --root --init-system --json" ;;
                uninstall | status) opts="--user --system --root --init-system --json" ;;
                *) return ;;
            esac
            ;;
        ping)
            opts="--json"
            if [[ $cur != -* ]]; then
                # The running daemon's services (nothing when it is not running).
                COMPREPLY=($(compgen -W "$(_msting_services)" -- "$cur"))
                return
            fi
            ;;
        *) return ;;
    esac
    COMPREPLY=($(compgen -W "$opts --help -h" -- "$cur"))
}

complete -F _msting msting
