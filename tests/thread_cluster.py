"""A real cluster over loopback UDP inside this test process: every node a bft.node.Node
served by trio.run in one background thread, with its config and keys on disk, so that
`bft.cli.main` can run in the test's own thread as a user would run `bft ...`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from bft.cli import main
from bft.config import ClusterConfig, load_keyring
from bft.node import Node
from transport.udp import free_udp_ports


def write_config(directory: Path, ports: list[int]) -> Path:
    nodes = "".join(f'[[nodes]]\nid = {i}\naddress = "127.0.0.1:{p}"\n'
                    for i, p in enumerate(ports))
    path = directory / "c.toml"
    path.write_text(f'[cluster]\nname = "cli"\nf = 1\n{nodes}[clients]\ncount = 4\n'
                    '[storage]\nfsync = "never"\n[timeouts]\nclient_s = 0.3\n')
    return path


class Cluster:
    """Four nodes in a thread; `stop()` cancels them."""

    def __init__(self, tmp_path: Path,
                 extensions: Callable[[ClusterConfig, int], Sequence[Any]] | None = None) -> None:
        self.config_path = write_config(tmp_path, free_udp_ports(4))
        self.key_dir = tmp_path / "keys"
        self.state_dir = tmp_path / "state"
        assert main(["keygen", str(self.config_path), "--key-dir", str(self.key_dir)]) == 0
        config = ClusterConfig.load(self.config_path)
        keyring = load_keyring(config, self.key_dir)
        self.nodes = [Node(config, i, signer=keyring.signer("replica", i),
                           verifier=keyring.verifier(), state_dir=tmp_path / f"n{i}",
                           extensions=extensions(config, i) if extensions else ())
                      for i in range(4)]
        for node in self.nodes:
            node.open()
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        started = threading.Event()

        async def serve() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                for node in self.nodes:
                    await nursery.start(node.run)
                started.set()

        self.thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
        self.thread.start()
        assert started.wait(30)

    def stop(self) -> None:
        assert self._token is not None and self._cancel is not None
        trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self.thread.join(30)

    def argv(self, *args: str) -> list[str]:
        return ["client", str(self.config_path), "--state-dir", str(self.state_dir),
                "--key-dir", str(self.key_dir), *args]


