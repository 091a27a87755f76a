#!/usr/bin/env bash
# Train with one process per GPU (per CPU process slot without CUDA) on this
# node, started by torchrun. Multi-node: run it on every node with NNODES,
# NODE_RANK, MASTER_ADDR and PORT set alike (NODE_RANK differing).
set -euo pipefail

usage() {
    cat >&2 <<USAGE
usage: $0 CONFIG GPUS [tools/train.py arguments...]
  GPUS   processes on this node (one per GPU; CPU processes without CUDA)
environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1),
             PORT (29500), PYTHON (python)
USAGE
    exit 2
}

[[ $# -ge 2 ]] || usage
CONFIG=$1
GPUS=$2
shift 2
if [[ ! $GPUS =~ ^[1-9][0-9]*$ ]]; then
    echo "GPUS must be a positive integer, got '$GPUS'" >&2
    usage
fi

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PORT=${PORT:-29500}
PYTHON=${PYTHON:-python}
TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

PYTHONPATH="$TOOLS_DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$GPUS" \
    "$TOOLS_DIR/train.py" "$CONFIG" --launcher pytorch "$@"
