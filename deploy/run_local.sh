#!/usr/bin/env bash
# A TLS SuperLink with SuperNode authentication and N SuperNodes on 127.0.0.1, one asyncfl run
# with `flwr run`, then every process stopped by its PID (also when the run fails).
#   deploy/run_local.sh 3 "strategy='fedbuff' clock='wall' num-server-rounds=10"
#   STEP_DELAYS=0,0.5,1 deploy/run_local.sh 3     # nodes declare how slow they really are
#   INSECURE=1 deploy/run_local.sh 2              # no TLS, no authentication: only if asked
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-2}
run_config=${2:-"strategy='fedbuff' clock='wall' num-server-rounds=6 local-steps=20"}
exec python -m asyncfl.tools.deploy local --nodes "$nodes" --run-config "$run_config" \
    --step-delays "${STEP_DELAYS:-}" --folder deploy-run ${INSECURE:+--insecure}
