"""`python -m emulator serve ...` — run the local Azure emulator until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
from pathlib import Path

from emulator import seeds
from emulator.core import Emulator
from emulator.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emulator")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="serve Entra, ARM/AKS, Resource Graph, Microsoft Graph and Key Vault")
    run.add_argument("--port", type=int, default=0, help="0 picks a free port")
    run.add_argument("--ready-file", type=Path, help="JSON written once connections are accepted")
    run.add_argument("--state-dir", type=Path, help="where the test CA is written (default: a temp dir)")
    run.add_argument("--estate", type=Path, help="estate JSON file (default: the demo estate)")
    run.add_argument("--clusters", type=int, help="generate an estate of N clusters instead")
    run.add_argument("--subscriptions", type=int, default=5)
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--latency-ms", type=int, default=0, help="added to every ARM/Graph/Key Vault request")
    args = parser.parse_args(argv)
    if args.estate:
        seed = seeds.load(args.estate)
    elif args.clusters is not None:
        seed = seeds.generate(args.clusters, args.subscriptions, args.seed)
    else:
        seed = seeds.demo(args.seed)
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="aks-rotator-emulator-"))
    asyncio.run(_run(Emulator(seed, args.latency_ms), args.port, state_dir, args.ready_file))


async def _run(emu: Emulator, port: int, state_dir: Path, ready_file: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(emu, port, state_dir, ready_file, stop)


if __name__ == "__main__":
    main()
