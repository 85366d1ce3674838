# Sourced by every step-1 launch script (and evaluation_scripts/run_prompt.sh): the preamble they share.
#
# Sets
#   STEP1_DIR, REPO_ROOT   the step-1 directory (where main.py is) and the repository root;
#   LAUNCHER_OPTS          an array of extra deepspeed launcher options, split from LAUNCHER_ARGS (env);
#   PYTHON                 PYTHON (env) if set, else the repository's .venv/bin/python if it exists (what
#                          `make test` and `make demo` build), else `python` from PATH;
#   DEEPSPEED              DEEPSPEED (env) if set, else the deepspeed next to that python if there is one
#                          (so the launcher's ranks run the same interpreter), else `deepspeed` from PATH;
# prints one line saying which interpreter and launcher it picked, and defines enter_step1_dir.

STEP1_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "$STEP1_DIR/../.." && pwd)"
read -r -a LAUNCHER_OPTS <<< "${LAUNCHER_ARGS:-}"

# The absolute path of a command (a name is looked up on PATH, a relative path is taken from here, before the
# scripts cd), or the name unchanged when there is no such command (running it then fails as usual).
resolve_command() {
    local found
    found="$(command -v "$1")" || { echo "$1"; return; }
    if [[ "$found" == /* ]]; then echo "$found"; else echo "$PWD/${found#./}"; fi
}

if [[ -n "${PYTHON:-}" ]]; then
    PYTHON_SOURCE="from PYTHON"
elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
    PYTHON="$REPO_ROOT/.venv/bin/python"
    PYTHON_SOURCE="the repository's .venv; set PYTHON to use another"
else
    PYTHON=python
    PYTHON_SOURCE="from PATH: no .venv in $REPO_ROOT; set PYTHON to choose"
fi
PYTHON="$(resolve_command "$PYTHON")"
if [[ -z "${DEEPSPEED:-}" && "$PYTHON" == /* && -x "$(dirname "$PYTHON")/deepspeed" ]]; then
    DEEPSPEED="$(dirname "$PYTHON")/deepspeed"
fi
DEEPSPEED="$(resolve_command "${DEEPSPEED:-deepspeed}")"
echo "dschat: python=$PYTHON ($PYTHON_SOURCE) deepspeed=$DEEPSPEED" >&2

# Create $OUTPUT and make it absolute (a relative path is taken from where the script was called), then cd
# into the step-1 dir: the run happens there, as upstream's scripts do.
enter_step1_dir() {
    mkdir -p "$OUTPUT"
    OUTPUT="$(cd "$OUTPUT" && pwd)"
    cd "$STEP1_DIR"
}
