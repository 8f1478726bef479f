"""In-process pipeline: the CPU one committed request costs each replica, without trio or sockets.

Run (from the repository root, in the venv):

    python -m benchmarks.pipeline [--nodes 4] [--clients 1,32,128] [--requests 3000]
                                    [--profile N] [--top 25] [--default-gc]

Builds `--nodes` pure replicas and closed-loop clients in one process with real
Ed25519 keys (as `bft node` signs) and MAC'd replies, and carries every message
through the real wire path (codec.encode, transport frames with CRC32C,
reassembly, codec.decode_untrusted) in FIFO order; no datagram is lost. It
counts the CPU time (`time.thread_time`) spent on behalf of each replica and of
the clients, per committed request. What is left out is exactly what the
real runtime adds on top: syscalls, trio's scheduler, telemetry and the WAL
file (each replica's effects go through the node's effect runner, bft/driver.py,
without storage: Persist effects are dropped). So `node us/req` here is the
floor the protocol code itself sets; the cluster benchmark's node CPU minus
this number is the runtime's share.

`--profile N` runs cProfile over replica N's share and prints the `--top`
functions by own time (the cost per request of each). The collector is tuned as
in `bft node` (`bft.node.tune_gc`) once the replicas exist; `--default-gc` keeps
CPython's defaults (the cyclic collector's time then lands on whatever function
allocated when it ran, often `builtins.sum` over a generator).
"""

from __future__ import annotations

import argparse
import cProfile
import collections
import gc
import pstats
import time
from typing import Any

from bft import codec
from bft.app import KVStore
from bft.auth import reply_auth_for
from bft.client import Client, ClientTimer, Completed, SendAll, SendTo
from bft.config import CLIENT_SENDER_BASE, ClusterConfig
from bft.crypto import Ed25519Keys
from bft.driver import EffectIO, EffectRunner
from bft.node import tune_gc
from bft.replica import Replica
from transport.frame import decode_frame_untrusted, encode_frames
from transport.reassembly import Reassembler


def _config(n: int, clients: int) -> ClusterConfig:
    from bft.bench import local_config
    return local_config(n, clients=clients)


class _PipelineIO(EffectIO):
    """Replica i's I/O in the pipeline: frames into the FIFO queue."""

    def __init__(self, pipeline: Pipeline, i: int) -> None:
        self.p, self.i = pipeline, i

    def send(self, to: int, message: Any) -> None:
        self.p._send(self.i, to, self.p._enc(message))

    def broadcast(self, message: Any) -> None:
        data = self.p._enc(message)
        for j in range(self.p.cfg.n):
            if j != self.i:
                self.p._send(self.i, j, data)

    def reply(self, client: int, reply: Any) -> None:
        self.p._send(self.i, CLIENT_SENDER_BASE + client, self.p._enc(reply))


class Pipeline:
    def __init__(self, n: int, n_clients: int, seed: int = 1) -> None:
        self.cfg = _config(n, n_clients)
        keys = Ed25519Keys(self.cfg.n, n_clients, seed=seed)
        self.replicas = []
        for i in range(self.cfg.n):
            signer, verifier = keys.signer("replica", i), keys.verifier()
            self.replicas.append(Replica(self.cfg, i, signer=signer, verifier=verifier,
                                         app=KVStore(), reply_auth=reply_auth_for(signer, verifier)))
        self.clients = []
        for c in range(n_clients):
            signer, verifier = keys.signer("client", c), keys.verifier()
            self.clients.append(Client(self.cfg, c, signer, verifier, send_to_all=True,
                                       reply_auth=reply_auth_for(signer, verifier)))
        self.reasm = {i: Reassembler() for i in range(self.cfg.n)}
        self.client_reasm = Reassembler()
        self.queue: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self.msg_id = 0
        self.now = 0.0
        # each replica's effects go through a runner (bft/driver.py) without storage (no WAL
        # here: Persist and SaveSnapshot are dropped); its I/O is the frame queue
        self.runners = [EffectRunner(None, _PipelineIO(self, i)) for i in range(self.cfg.n)]
        self._encoded: dict[int, bytes] = {}
        self.cpu = collections.Counter()
        self.completed = 0
        self.latencies: list[float] = []
        self.profiler: cProfile.Profile | None = None
        self.profiled = -1

    # -- wire

    def _send(self, sender: int, dest: int, payload: bytes) -> None:
        self.msg_id += 1
        for frame in encode_frames(sender, self.msg_id, payload, self.cfg.max_datagram_bytes):
            self.queue.append((sender, dest, frame))

    def _replica_effects(self, i: int, effects: list[Any]) -> None:
        self._encoded.clear()
        self.runners[i].run(effects)
        self._encoded.clear()

    def _enc(self, message: Any) -> bytes:
        """A message's encoding, made once per step (a broadcast's copies share it)."""
        data = self._encoded.get(id(message))
        if data is None:
            data = self._encoded[id(message)] = codec.encode(message)
        return data

    def _client_effects(self, c: int, effects: list[Any]) -> None:
        for e in effects:
            if isinstance(e, (SendAll, SendTo)):
                data = codec.encode(e.request)
                dests = range(self.cfg.n) if isinstance(e, SendAll) else (e.replica,)
                for j in dests:
                    self._send(CLIENT_SENDER_BASE + c, j, data)
            elif isinstance(e, Completed):
                self.completed += 1
                self.latencies.append(e.latency_s)
                if self.remaining > 0:
                    self.remaining -= 1
                    self._client_effects(c, self.clients[c].submit(b"", self.now))
            elif isinstance(e, ClientTimer):
                pass  # no loss here: retransmission never needed

    # -- driving

    def _timed(self, who: Any, fn: Any, *args: Any) -> Any:
        prof = self.profiler if who == self.profiled else None
        t0 = time.thread_time()
        if prof is not None:
            prof.enable()
        out = fn(*args)
        if prof is not None:
            prof.disable()
        self.cpu[who] += time.thread_time() - t0
        return out

    def _deliver_to_replica(self, i: int, sender: int, frame_bytes: bytes) -> None:
        frame = decode_frame_untrusted(frame_bytes, max_message_bytes=self.cfg.limits.max_message_bytes)
        payload = self.reasm[i].add(sender, frame, self.now)
        if payload is None:
            return
        msg = codec.decode_untrusted(payload, self.cfg.limits)
        effects = self.replicas[i].receive(msg, self.now)
        self._replica_effects(i, effects)

    def _deliver_to_client(self, c: int, sender: int, frame_bytes: bytes) -> None:
        frame = decode_frame_untrusted(frame_bytes, max_message_bytes=self.cfg.limits.max_message_bytes)
        payload = self.client_reasm.add(sender, frame, self.now)
        if payload is None:
            return
        client = self.clients[c]
        if not client.busy:
            return
        msg = codec.decode_untrusted(payload, self.cfg.limits)
        self._client_effects(c, client.receive(msg, self.now))

    def run(self, requests: int) -> None:
        self.remaining = requests
        for i, r in enumerate(self.replicas):
            self._replica_effects(i, self._timed(i, r.start, self.now))
        for c, client in enumerate(self.clients):
            if self.remaining > 0:
                self.remaining -= 1
                self._timed("clients", lambda c=c, client=client: self._client_effects(
                    c, client.submit(b"", self.now)))
        step = 0
        while self.queue:
            sender, dest, frame = self.queue.popleft()
            step += 1
            if step % 64 == 0:
                self.now += 0.0005  # virtual time creeps forward: timers (status) still fire
                for i, runner in enumerate(self.runners):
                    if runner.take_due(self.now):  # once per SetTimer (bft/driver.py)
                        self._timed(i, lambda i=i: self._replica_effects(
                            i, self.replicas[i].tick(self.now)))
            if dest >= CLIENT_SENDER_BASE:
                self._timed("clients", self._deliver_to_client, dest - CLIENT_SENDER_BASE, sender,
                            frame)
            else:
                self._timed(dest, self._deliver_to_replica, dest, sender, frame)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--clients", default="1,32,128")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--profile", type=int, default=None, help="cProfile this replica's share")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--default-gc", action="store_true",
                    help="keep CPython's gc thresholds (bft node tunes them)")
    args = ap.parse_args()
    print(f"n = {args.nodes}, {args.requests} requests per row, CPU per committed request")
    print(f"{'clients':>7} {'batch':>6} {'primary us':>11} {'backup us':>10} {'clients us':>11}")
    for count in [int(x) for x in args.clients.split(",")]:
        p = Pipeline(args.nodes, count)
        if not args.default_gc:
            previous = tune_gc()
        if args.profile is not None:
            p.profiler, p.profiled = cProfile.Profile(), args.profile
        p.run(args.requests)
        if not args.default_gc:
            gc.unfreeze()
            gc.set_threshold(*previous)
        done = p.completed
        executed = p.replicas[0].counters.get("proposed", 0)
        batch = done / executed if executed else 0.0
        per = {k: v / done * 1e6 for k, v in p.cpu.items()}
        backups = [per[i] for i in range(1, args.nodes)]
        print(f"{count:>7} {batch:>6.1f} {per[0]:>11.1f} {sum(backups) / len(backups):>10.1f} "
              f"{per['clients']:>11.1f}")
        if p.profiler is not None:
            stats = pstats.Stats(p.profiler)
            stats.sort_stats("tottime")
            print(f"  replica {args.profile}: top functions by own time, us per request")
            rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:args.top]  # type: ignore[attr-defined]
            for (file, line, fn), (cc, nc, tt, ct, _callers) in rows:
                short = file.rsplit("/", 2)[-2:]
                print(f"    {tt / done * 1e6:8.1f} own {ct / done * 1e6:8.1f} cum  {nc / done:6.1f} calls"
                      f"  {fn} ({'/'.join(short)}:{line})")


if __name__ == "__main__":
    main()
