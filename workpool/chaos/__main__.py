"""`python -m workpool.chaos`: a seeded fault-injection run (`run`, the default) or the fsync
durability measurement (`durability`). Exits 1 when a guarantee was violated."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from workpool.chaos.failover import MASTER_KINDS
from workpool.chaos.faults import KINDS, TOPOLOGY_KINDS
from workpool.chaos.runner import RunConfig, recheck, run
from workpool.chaos.table import render
from workpool.server.embedded import find_redis_server


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workpool.chaos", description=__doc__)
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="inject faults under load, then check the history")
    d = RunConfig()
    r.add_argument("--seed", type=int, default=d.seed)
    r.add_argument("--duration", type=float, default=d.duration, help="seconds of faults")
    r.add_argument("--workers", type=int, default=d.workers)
    r.add_argument("--concurrency", type=int, default=d.concurrency)
    r.add_argument("--rate", type=float, default=d.rate, help="client operations per second")
    r.add_argument("--faults-per-kind", type=int, default=d.faults_per_kind)
    r.add_argument("--kinds", default=None, help="comma-separated fault kinds (default: every "
                   "kind the topology has)")
    r.add_argument("--topology", choices=["single", "cluster", "sentinel"], default=d.topology,
                   help="one redis-server, a Redis Cluster or a Sentinel-managed master")
    r.add_argument("--replicas", type=int, default=d.replicas,
                   help="the pool's replicas= (WAIT after each write)")
    r.add_argument("--shards", type=int, default=d.shards, help="the pool's shards=")
    r.add_argument("--appendfsync", choices=["always", "everysec"], default=d.appendfsync)
    r.add_argument("--ttl", type=float, default=d.ttl, help="lease and heartbeat TTL (s)")
    r.add_argument("--max-parallelism", type=int, default=d.max_parallelism)
    r.add_argument("--quiesce-timeout", type=float, default=d.quiesce_timeout)
    r.add_argument("--out", type=Path, default=None, help="run directory (default: a temp dir)")
    c = sub.add_parser("check", help="check a finished run's directory again")
    c.add_argument("run_dir", type=Path)
    u = sub.add_parser("durability", help="acknowledged enqueues lost per redis-server crash")
    u.add_argument("--appendfsync", choices=["always", "everysec", "both"], default="both")
    u.add_argument("--crashes", type=int, default=20)
    u.add_argument("--clients", type=int, default=4)
    u.add_argument("--seed", type=int, default=1)
    u.add_argument("--out", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv if argv is not None else sys.argv[1:] or ["run"])
    if args.command == "check":
        report = recheck(args.run_dir)
        print(render(report, f"workpool chaos run in {args.run_dir} (checked again)"))
        return 0 if report.ok else 1
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="workpool-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.command == "durability":
        from workpool.chaos.durability import main as durability  # noqa: PLC0415

        return durability(args.appendfsync, args.crashes, args.clients, args.seed, out)
    known = KINDS if args.topology == "single" else TOPOLOGY_KINDS
    kinds = tuple(k for k in (args.kinds or ",".join(known)).split(",") if k)
    unknown = set(kinds) - set(known)
    if unknown:
        print(f"fault kinds not for a {args.topology} run: {', '.join(sorted(unknown))}; "
              f"known: {', '.join(known)}" + ("" if args.topology != "single" else
                                               f" ({', '.join(MASTER_KINDS)}: --topology)"))
        return 2
    config = RunConfig(seed=args.seed, duration=args.duration, workers=args.workers,
                       concurrency=args.concurrency, rate=args.rate,
                       faults_per_kind=args.faults_per_kind, kinds=kinds,
                       appendfsync=args.appendfsync, ttl=args.ttl,
                       max_parallelism=args.max_parallelism,
                       quiesce_timeout=args.quiesce_timeout, topology=args.topology,
                       replicas=args.replicas, shards=args.shards)
    began = time.monotonic()
    report = run(config, out)
    header = (f"workpool chaos run: seed {config.seed}, {config.duration:.0f} s of faults, "
              f"{config.workers} workers x {config.concurrency}, max_parallelism "
              f"{config.max_parallelism}, lease/heartbeat TTL {config.ttl} s, appendfsync "
              f"{config.appendfsync}, {config.rate:.0f} ops/s, {config.topology} Redis, "
              f"replicas={config.replicas}, shards={config.shards}, {find_redis_server()}\n"
              f"run dir {out}; took {time.monotonic() - began:.0f} s")
    print(render(report, header))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
