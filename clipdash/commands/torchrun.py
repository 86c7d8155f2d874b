"""The torch.distributed.run command line `clipdash run` launches its ranks with.

One node (`--nproc-per-node N`): a standalone rendezvous on this machine. Several nodes
(`--nnodes M --node-rank R --rdzv-endpoint HOST:PORT`, the same on every node but the rank):
a c10d rendezvous at the endpoint, which node 0's machine hosts. Every node must see the same
runs directory (a shared filesystem) for resume; only global rank 0 writes the record.
"""

from __future__ import annotations

import argparse
import re

from clipdash.commands.errors import UsageError

_ENDPOINT = re.compile(r"^\[?[\w.:-]+\]?:\d{1,5}$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nnodes", type=int, default=1, metavar="M",
                        help="nodes (machines) taking part; each runs this command with its "
                        "own --node-rank (default: 1)")
    parser.add_argument("--node-rank", type=int, default=0, metavar="R",
                        help="this node's rank, 0 .. M-1 (default: 0)")
    parser.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                        help="where the nodes meet (node 0's address; needed with --nnodes > 1)")


def wanted(args: argparse.Namespace) -> bool:
    """True if these arguments ask for more than one rank."""
    return args.nproc_per_node > 1 or args.nnodes > 1


def launcher(args: argparse.Namespace) -> list[str]:
    """torch.distributed.run's own arguments (before the module to run); UsageError if bad."""
    if args.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    if args.nnodes < 1:
        raise UsageError(f"--nnodes must be >= 1, got {args.nnodes}")
    if not 0 <= args.node_rank < args.nnodes:
        raise UsageError(f"--node-rank must be in 0 .. {args.nnodes - 1}, got {args.node_rank}")
    ranks = [f"--nproc-per-node={args.nproc_per_node}"]
    if args.nnodes == 1:
        if args.rdzv_endpoint:
            raise UsageError("--rdzv-endpoint needs --nnodes > 1 (one node meets itself)")
        return ["--standalone", *ranks]
    endpoint = args.rdzv_endpoint
    if not endpoint:
        raise UsageError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (node 0's address)")
    if not _ENDPOINT.match(endpoint):
        raise UsageError(f"--rdzv-endpoint must be HOST:PORT, got {endpoint!r}")
    return [f"--nnodes={args.nnodes}", f"--node-rank={args.node_rank}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}", *ranks]
