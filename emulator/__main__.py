"""`python -m emulator serve ...` — run the local Azure emulator until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType

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


GRACE_SECONDS = 0.8  # after SIGTERM/SIGINT: a graceful stop if it is this quick, else exit anyway


async def _run(emu: Emulator, port: int, state_dir: Path, ready_file: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        """A Python-level handler, not `loop.add_signal_handler`: it runs between bytecodes even while a handler
        keeps the loop busy, and a timer ends the process if the graceful stop (in-flight requests) takes longer."""
        loop.call_soon_threadsafe(stop.set)
        timer = threading.Timer(GRACE_SECONDS, os._exit, args=(128 + signum,))
        timer.daemon = True  # a graceful stop in time ends the process without waiting for it
        timer.start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    await serve(emu, port, state_dir, ready_file, stop)


if __name__ == "__main__":
    main()
