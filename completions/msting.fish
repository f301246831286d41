# fish completion for msting.
# Install: cp completions/msting.fish ~/.config/fish/completions/  (install.sh does this)

set -l llm_cmds install start stop restart status wait logs health profiles switch-profile models load unload pull import rm search usage jobs services ping route doctor service

complete -c msting -f
complete -c msting -n __fish_use_subcommand -s h -l help -d 'Show help'
complete -c msting -n __fish_use_subcommand -s V -l version -d 'Print the version'
complete -c msting -n __fish_use_subcommand -a llm -d 'Manage the local LLM service'

set -l in_llm "__fish_seen_subcommand_from llm; and not __fish_seen_subcommand_from $llm_cmds"
complete -c msting -n $in_llm -a install -d 'Install and verify the local LLM service'
complete -c msting -n $in_llm -a start -d 'Start the daemon and wait until it is ready'
complete -c msting -n $in_llm -a stop -d 'Stop the daemon and its workers'
complete -c msting -n $in_llm -a restart -d 'Stop, then start the daemon'
complete -c msting -n $in_llm -a status -d 'Show the daemon, its readiness, its models and services'
complete -c msting -n $in_llm -a wait -d 'Block until the daemon is ready'
complete -c msting -n $in_llm -a logs -d 'Print (and follow) the daemon log'
complete -c msting -n $in_llm -a health -d 'Run the readiness checks now'
complete -c msting -n $in_llm -a profiles -d 'List the profiles, their models and memory'
complete -c msting -n $in_llm -a switch-profile -d 'Switch the daemon to another profile'
complete -c msting -n $in_llm -a models -d 'List the models of the active profile'
complete -c msting -n $in_llm -a load -d 'Load a model and wait until it is ready'
complete -c msting -n $in_llm -a unload -d 'Unload a model'
complete -c msting -n $in_llm -a pull -d 'Download a model (hf://, ollama://, https://) with progress'
complete -c msting -n $in_llm -a import -d 'Register a local GGUF file as an installed model'
complete -c msting -n $in_llm -a rm -d 'Delete an installed model'
complete -c msting -n $in_llm -a search -d 'Search the Hugging Face hub for GGUF models'
complete -c msting -n $in_llm -a usage -d 'Show what the requests used and cost'
complete -c msting -n $in_llm -a jobs -d "List the daemon's jobs; cancel one"
complete -c msting -n $in_llm -a services -d 'List the services behind the daemon and their URLs'
complete -c msting -n $in_llm -a ping -d 'Check each URL of a service now'
complete -c msting -n $in_llm -a route -d 'Explain which route and model a request would get'
complete -c msting -n $in_llm -a doctor -d 'Check what msting needs, each with a fix hint'
complete -c msting -n $in_llm -a service -d 'Run the daemon under the init system (systemd, launchd)'

function __msting_llm_cmd
    __fish_seen_subcommand_from llm; or return 1
    # `service install` and `service status` are not `install` and `status`
    if not contains service $argv; and __fish_seen_subcommand_from service
        return 1
    end
    # `jobs cancel` is not another command
    if not contains jobs $argv; and __fish_seen_subcommand_from jobs
        return 1
    end
    __fish_seen_subcommand_from $argv
end

complete -c msting -n '__msting_llm_cmd install' -l model -r -F -d 'GGUF model file or source to serve'
complete -c msting -n '__msting_llm_cmd install' -l no-deps -d 'Do not pip-install llama-cpp-python'
complete -c msting -n '__msting_llm_cmd install' -l no-start -d 'Do not start the daemon'
complete -c msting -n '__msting_llm_cmd start' -l foreground -d 'Run the daemon in this process'
complete -c msting -n '__msting_llm_cmd stop restart' -l force -d 'Kill at once'
complete -c msting -n '__msting_llm_cmd switch-profile' -l dry-run -d 'Print the plan, change nothing'
complete -c msting -n '__msting_llm_cmd install start stop restart wait health switch-profile load' -l timeout -x -d 'Seconds to wait'
complete -c msting -n '__msting_llm_cmd install start stop restart status wait health profiles switch-profile models load unload services ping' -l json -d 'Print JSON'
# The running daemon's services (nothing when it is not running).
function __msting_services
    msting llm services --json 2>/dev/null | string replace -rf '^      "name": "([^"]*)".*' '$1'
end
complete -c msting -n '__msting_llm_cmd ping' -a '(__msting_services)' -d 'Service'
complete -c msting -n '__msting_llm_cmd route' -l explain -r -F -d 'The request body (JSON) to explain'
complete -c msting -n '__msting_llm_cmd route' -l json -d 'Print JSON'
complete -c msting -n '__msting_llm_cmd logs' -s f -l follow -d 'Keep printing new lines'
complete -c msting -n '__msting_llm_cmd logs' -s n -l lines -x -d 'Number of lines'
set -l svc_cmds install uninstall status
set -l in_service "__msting_llm_cmd service; and not __fish_seen_subcommand_from $svc_cmds"
complete -c msting -n $in_service -a install -d 'Write, enable and start the service'
complete -c msting -n $in_service -a uninstall -d 'Stop, disable and remove the service'
complete -c msting -n $in_service -a status -d 'Whether the service is installed, enabled and active'
set -l svc_any "__msting_llm_cmd service; and __fish_seen_subcommand_from $svc_cmds"
complete -c msting -n $svc_any -l user -d "The user's own service"
complete -c msting -n $svc_any -l system -d 'A system service'
complete -c msting -n $svc_any -l root -r -a '(__fish_complete_directories)' -d 'Act on DIR as if it were /'
complete -c msting -n $svc_any -l init-system -x -a 'systemd launchd' -d 'systemd or launchd'
complete -c msting -n $svc_any -l json -d 'Print JSON'
complete -c msting -n '__msting_llm_cmd service; and __fish_seen_subcommand_from install' -l dry-run -d 'Print the file and the commands'
complete -c msting -n '__msting_llm_cmd service; and __fish_seen_subcommand_from install' -l no-start -d 'Enable but do not start'
complete -c msting -n '__msting_llm_cmd doctor' -l json -d 'Print JSON'
complete -c msting -n '__msting_llm_cmd pull' -l sha256 -x -d 'Expected sha256 of the file'
complete -c msting -n '__msting_llm_cmd pull import' -l name -x -d 'Name to install it under'
complete -c msting -n '__msting_llm_cmd import' -l link -d 'Link the file instead of copying it'
complete -c msting -n '__msting_llm_cmd import' -F -d 'GGUF file'
complete -c msting -n '__msting_llm_cmd search' -l limit -x -d 'At most N models'
complete -c msting -n '__msting_llm_cmd pull import rm search usage' -l json -d 'Print JSON'
complete -c msting -n '__msting_llm_cmd usage' -s g -l group-by -x -a 'service model day client' -d 'Group by'
complete -c msting -n '__msting_llm_cmd usage' -l since -x -d 'From this time (ISO 8601, Unix seconds, 24h, 7d)'
complete -c msting -n '__msting_llm_cmd usage' -l until -x -d 'Before this time'
set -l in_jobs "__msting_llm_cmd jobs; and not __fish_seen_subcommand_from cancel"
complete -c msting -n $in_jobs -a cancel -d 'Cancel a job'
complete -c msting -n $in_jobs -l type -x -a 'install import update delete load unload switch' -d 'Only jobs of this type'
complete -c msting -n $in_jobs -l state -x -a 'queued running succeeded failed cancelled' -d 'Only jobs in this state'
complete -c msting -n '__msting_llm_cmd jobs' -l json -d 'Print JSON'
