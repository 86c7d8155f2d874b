"""`clipdash completion bash|zsh|fish`: a shell completion script, printed to stdout.

Commands and options are read from the argument parser itself, so the script cannot drift
from the CLI. Run names are completed live with the hidden `clipdash ls --names [DIR]`
(honouring a `--runs-dir DIR` already typed), so they are never stale.

    eval "$(clipdash completion bash)"            # in ~/.bashrc
    clipdash completion zsh > ~/.zfunc/_clipdash  # with fpath+=(~/.zfunc) before compinit
    clipdash completion fish > ~/.config/fish/completions/clipdash.fish
"""

from __future__ import annotations

import argparse

from clipdash.control import ACTIONS
from clipdash.track.options import ALL_SETTABLE

SHELLS = ("bash", "zsh", "fish")
# Commands whose positional arguments are runs, and the words `ctl` takes after RUN.
RUN_COMMANDS = ("ctl", "export", "suggest", "compare", "rm")
FILE_COMMANDS = ("run", "sweep", "lr-find")
DIR_COMMANDS = ("ls", "watch")
CTL_WORDS = " ".join((*ACTIONS, "set", *(f"{key}=" for key in ALL_SETTABLE)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=SHELLS)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(--long-option, help) for every visible option of a subcommand."""
    out = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        for opt in action.option_strings:
            if opt.startswith("--"):
                out.append((opt, (action.help or "").split(" (")[0]))
    return out


NAMES = 'clipdash ls --names "$runs_dir" 2>/dev/null'  # the shell variable both scripts set
OTHER_RUN_COMMANDS = "|".join(c for c in RUN_COMMANDS if c != "ctl")


def bash(subs: dict[str, argparse.ArgumentParser]) -> str:
    cases = "\n".join(f'        {name}) opts="{" ".join(o for o, _ in options(p))}";;'
                      for name, p in subs.items())
    return f'''# clipdash bash completion: eval "$(clipdash completion bash)"
_clipdash() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local cmd="${{COMP_WORDS[1]}}" runs_dir=runs opts="" i
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{" ".join(subs)} --help --version" -- "$cur")); return
    fi
    for ((i = 2; i < COMP_CWORD; i++)); do
        [ "${{COMP_WORDS[i]}}" = --runs-dir ] && runs_dir="${{COMP_WORDS[i+1]}}"
    done
    case "$prev" in
        --runs-dir) COMPREPLY=($(compgen -d -- "$cur")); return;;
        --resume) COMPREPLY=($(compgen -W "$({NAMES}) @latest" -- "$cur")); return;;
    esac
    if [[ "$cur" == -* ]]; then
        case "$cmd" in
{cases}
        esac
        COMPREPLY=($(compgen -W "$opts --help" -- "$cur")); return
    fi
    case "$cmd" in
        ctl) COMPREPLY=($(compgen -W "$({NAMES}) @latest {CTL_WORDS}" -- "$cur"));;
        {OTHER_RUN_COMMANDS})
            COMPREPLY=($(compgen -W "$({NAMES}) @latest" -- "$cur"));;
        {"|".join(FILE_COMMANDS)}) COMPREPLY=($(compgen -f -- "$cur"));;
        {"|".join(DIR_COMMANDS)}) COMPREPLY=($(compgen -d -- "$cur"));;
        help) COMPREPLY=($(compgen -W "{" ".join(subs)}" -- "$cur"));;
        completion) COMPREPLY=($(compgen -W "{" ".join(SHELLS)}" -- "$cur"));;
    esac
    # `set max_norm=`: no space after the `=`, the value comes next
    [[ ${{#COMPREPLY[@]}} -eq 1 && ${{COMPREPLY[0]}} == *= ]] && compopt -o nospace 2>/dev/null
    return 0
}}
complete -o default -F _clipdash clipdash
'''


def zsh(subs: dict[str, argparse.ArgumentParser]) -> str:
    commands = " ".join(f"'{n}:{(p.description or '').replace(chr(39), '')}'"
                        for n, p in subs.items())
    cases = "\n".join(f"        {name}) opts=({' '.join(o for o, _ in options(p))});;"
                      for name, p in subs.items())
    return f'''#compdef clipdash
# clipdash zsh completion: clipdash completion zsh > ~/.zfunc/_clipdash
_clipdash() {{
    local cmd=${{words[2]}} cur=${{words[CURRENT]}} prev=${{words[CURRENT-1]}} runs_dir=runs i
    local -a opts commands
    commands=({commands})
    if (( CURRENT == 2 )); then _describe command commands; return; fi
    for (( i = 3; i < CURRENT; i++ )); do
        [[ ${{words[i]}} == --runs-dir ]] && runs_dir=${{words[i+1]}}
    done
    if [[ $prev == --runs-dir ]]; then _files -/; return; fi
    local -a names
    names=(${{(f)"$({NAMES})"}} @latest)
    if [[ $prev == --resume ]]; then compadd -- $names; return; fi
    if [[ $cur == -* ]]; then
        case $cmd in
{cases}
        esac
        compadd -- $opts --help; return
    fi
    case $cmd in
        ctl) compadd -- $names {CTL_WORDS};;
        {OTHER_RUN_COMMANDS}) compadd -- $names;;
        {"|".join(FILE_COMMANDS)}) _files;;
        {"|".join(DIR_COMMANDS)}) _files -/;;
        help) compadd -- {" ".join(subs)};;
        completion) compadd -- {" ".join(SHELLS)};;
    esac
}}
compdef _clipdash clipdash
'''


# Run names from the --runs-dir already on the command line, else ./runs.
FISH_RUNS = f"""function __clipdash_runs
    set -l words (commandline -opc)
    set -l runs_dir runs
    for i in (seq (count $words))
        if test "$words[$i]" = --runs-dir; and test $i -lt (count $words)
            set runs_dir $words[(math $i + 1)]
        end
    end
    {NAMES}
    echo @latest
end"""


def fish(subs: dict[str, argparse.ArgumentParser]) -> str:
    def quote(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    lines = ["# clipdash fish completion: clipdash completion fish > "
             "~/.config/fish/completions/clipdash.fish",
             FISH_RUNS, "complete -c clipdash -f"]
    for name, p in subs.items():
        lines.append(f"complete -c clipdash -n __fish_use_subcommand -a {name} "
                     f"-d {quote(p.description or '')}")
        for opt, help_text in options(p):
            lines.append(f"complete -c clipdash -n '__fish_seen_subcommand_from {name}' "
                         f"-l {opt[2:]} -d {quote(help_text)}")
    names = "(__clipdash_runs)"
    lines += [
        f"complete -c clipdash -n '__fish_seen_subcommand_from {' '.join(RUN_COMMANDS)}' "
        f"-a '{names}'",
        f"complete -c clipdash -n '__fish_seen_subcommand_from ctl' -a '{CTL_WORDS}'",
        f"complete -c clipdash -n '__fish_seen_subcommand_from {' '.join(FILE_COMMANDS)}' -F",
        f"complete -c clipdash -n '__fish_seen_subcommand_from {' '.join(DIR_COMMANDS)}' "
        "-a '(__fish_complete_directories)'",
        f"complete -c clipdash -n '__fish_seen_subcommand_from help' -a '{' '.join(subs)}'",
        f"complete -c clipdash -n '__fish_seen_subcommand_from completion' "
        f"-a '{' '.join(SHELLS)}'",
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    subs = subparsers(args._root)
    print({"bash": bash, "zsh": zsh, "fish": fish}[args.shell](subs), end="")
    return 0
