#!/usr/bin/env bash
# Did each commit since BASE change fmpipe's outputs? For every commit in BASE..HEAD (merged
# branches included), the reference outputs (this checkout's scripts/make_reference_outputs.sh, run
# with that commit's package from a temporary worktree), compared with each parent's by
# scripts/same_output.py. One line per (commit, parent): identical, or DIFFERS. A refactoring commit
# must read identical (ARCHITECTURE.md); a feature commit may differ and says so in its message.
#   bash scripts/same_output_history.sh BASE [OUTPUTS_DIR]     # ~45 s a commit on 2 cores
set -uo pipefail
base=${1:?usage: same_output_history.sh BASE [OUTPUTS_DIR]}
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${2:-$(mktemp -d)}
wt=$(mktemp -d)/tree
cd "$repo"
made() {  # the outputs of commit $1, made once
    local c=$1
    if [ ! -d "$out/$c" ]; then
        git worktree add -q --detach "$wt" "$c"
        PYTHONPATH="$wt" bash "$repo/scripts/make_reference_outputs.sh" "$out/$c.tmp" > "$out/$c.log" 2>&1 && mv "$out/$c.tmp" "$out/$c"
        git worktree remove --force "$wt"
    fi
}
made "$(git rev-parse --short "$base")"
for c in $(git rev-list --reverse --topo-order --abbrev-commit "$base"..HEAD); do
    made "$c"
    for parent in $(git log -1 --format=%P "$c"); do
        p=$(git rev-parse --short "$parent")
        made "$p"
        if python "$repo/scripts/same_output.py" "$out/$p" "$out/$c" --ignore images_root > "$out/$c-vs-$p.txt" 2>&1; then
            verdict=identical
        else
            verdict=DIFFERS
        fi
        echo "$c vs parent $p: $verdict  $(git log -1 --format=%s "$c" | cut -c1-100)"
    done
done
