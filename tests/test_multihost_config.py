"""A multi-host cluster that works as written (issue 23 item 1): every identity's public
key inline in the config (the admin's too), a `listen` address beside the advertised
one for each node, and clients that bind where they are, not where node 0 is.

The real multi-host recipe, on network namespaces: tests/cluster/test_netns.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bft.app import Ops, decode_result
from bft.cli import main
from bft.config import ClusterConfig, DuplicateKeyError, NodeAddress, load_keyring
from bft.crypto import Ed25519Keys, save_private_key, save_public_key
from bft.errors import ConfigError
from bft.launcher import config_to_toml
from bft.node import ClientMux, ClusterClient, Node
from transport.udp import free_udp_ports

KEYS = Ed25519Keys(4, 2, seed=23)


def _hex(kind: str, id: int = 0) -> str:
    return KEYS.public_keys[(kind, id)].hex()


def _config_text(*, node3: str = "", admin: str | None = None, extra: str = "") -> str:
    """4 nodes and 2 clients, every key inline except the admin's unless `admin` is given;
    `node3` adds lines to node 3's table."""
    nodes = "".join(
        f'[[nodes]]\nid = {i}\naddress = "127.0.0.1:{7000 + i}"\n'
        f'public_key = "{_hex("replica", i)}"\n' + (node3 if i == 3 else "")
        for i in range(4))
    clients = "".join(f'[[clients]]\nid = {c}\npublic_key = "{_hex("client", c)}"\n'
                      for c in range(2))
    admin_table = f'[admin]\npublic_key = "{admin}"\n' if admin is not None else ""
    return f'[cluster]\nname = "mh"\nf = 1\n{nodes}{clients}{admin_table}{extra}'


def _load(tmp_path: Path, text: str) -> ClusterConfig:
    path = tmp_path / "mh.toml"
    path.write_text(text)
    return ClusterConfig.load(path)


# ---------------------------------------------------------------------- the admin key inline


def test_admin_key_inline_needs_no_key_files(tmp_path):
    """`[admin] public_key` gives the admin's key like nodes' and clients' inline keys, so
    a host holding no .pub file at all (here: an empty key directory) has the whole
    keyring. Failed before the fix: `unknown section` admin (and without it, `public key of
    admin 0 not found`: `bft ctl` was refused on every host but the one that made it)."""
    config = _load(tmp_path, _config_text(admin=_hex("admin")))
    assert config.admin_public_key == KEYS.public_keys[("admin", 0)]
    keyring = load_keyring(config, tmp_path / "empty")
    assert keyring.public_keys == KEYS.public_keys


def test_keyring_without_admin_key_says_where_to_set_it(tmp_path):
    """No inline admin key and no admin.pub: the error names admin.pub and `[admin]
    public_key`. Failed before the fix: it only said to run keygen (no inline way)."""
    config = _load(tmp_path, _config_text())
    with pytest.raises(ConfigError) as info:
        load_keyring(config, tmp_path / "empty")
    assert "admin.pub" in str(info.value) and "admin.public_key" in str(info.value)


@pytest.mark.parametrize("bad, message", [
    ('"abc"', "expected 64 hex digits"),
    (f'"{"zz" * 32}"', "expected 64 hex digits"),
    ("7", "expected a hex string"),
    (f'"{"ab" * 33}"', "expected 64 hex digits"),
])
def test_a_malformed_admin_key_is_a_clear_error(tmp_path, bad, message):
    """A malformed `[admin] public_key`: ConfigError naming the file, the field and the
    fix. Failed before the fix: `unknown section` (no inline admin key at all)."""
    path = tmp_path / "mh.toml"
    path.write_text(_config_text() + f"[admin]\npublic_key = {bad}\n")
    with pytest.raises(ConfigError) as info:
        ClusterConfig.load(path)
    text = str(info.value)
    assert "admin.public_key" in text and message in text and str(path) in text


def test_admin_table_rejects_unknown_keys_and_non_tables(tmp_path):
    path = tmp_path / "mh.toml"
    path.write_text(_config_text() + f'[admin]\npublic_kye = "{_hex("admin")}"\n')
    with pytest.raises(ConfigError, match="did you mean 'public_key'"):
        ClusterConfig.load(path)
    path.write_text('admin = "x"\n' + _config_text())
    with pytest.raises(ConfigError, match="expected a table"):
        ClusterConfig.load(path)


def test_admin_key_shared_with_a_replica_is_rejected(tmp_path):
    """The admin's key must be its own (one key for two identities counts one host
    twice)."""
    with pytest.raises(DuplicateKeyError, match="admin has the same public key as replica 1"):
        _load(tmp_path, _config_text(admin=_hex("replica", 1)))


def test_admin_key_file_that_disagrees_with_the_config_is_an_error(tmp_path):
    config = _load(tmp_path, _config_text(admin=_hex("admin")))
    keys = tmp_path / "keys"
    keys.mkdir()
    save_public_key(keys / "admin.pub", KEYS.private_keys[("client", 0)])
    with pytest.raises(ConfigError, match="differs from the public key in"):
        load_keyring(config, keys)


def test_keygen_only_admin_prints_the_admin_line_and_config_skips_it(tmp_path, capsys):
    """`bft keygen CONFIG --only admin` prints the `[admin] public_key` line; with that
    line in the config the admin key is skipped like any inline key. Failed before the fix:
    it said to copy admin.pub to every node (the admin key could not be inline)."""
    path = tmp_path / "mh.toml"
    path.write_text(_config_text())
    keys = tmp_path / "adminhost"
    assert main(["keygen", str(path), "--key-dir", str(keys), "--only", "admin"]) == 0
    out = capsys.readouterr().out
    public = (keys / "admin.pub").read_text().strip()
    assert f'under [admin]: public_key = "{public}"' in out
    path.write_text(_config_text(admin=public))
    assert main(["keygen", str(path), "--key-dir", str(tmp_path / "k2"), "--only", "admin"]) == 0
    assert "public key given in the config: skipped" in capsys.readouterr().out


# ---------------------------------------------------------------------- listen addresses


def test_listen_is_parsed_beside_the_advertised_address(tmp_path):
    """`listen = "host:port"` in a [[nodes]] table: the node binds it; peers still send to
    `address`. Failed before the fix: `unknown key` nodes[3].listen."""
    config = _load(tmp_path, _config_text(node3='listen = "0.0.0.0:7103"\n'))
    node3 = config.node(3)
    assert node3.address == ("127.0.0.1", 7003)
    assert node3.listen == ("0.0.0.0", 7103)
    assert node3.bind_address == ("0.0.0.0", 7103)
    assert config.node(0).listen is None and config.node(0).bind_address == ("127.0.0.1", 7000)


@pytest.mark.parametrize("listen, message", [
    ('"nope"', "cannot parse address"),
    ('"0.0.0.0:0"', "not in 1..65535"),
    ('"[::]:7103"', "listen is an IPv6 address but address is IPv4"),
    ("7103", "expected an address string"),
])
def test_a_bad_listen_address_is_a_clear_error(tmp_path, listen, message):
    path = tmp_path / "mh.toml"
    path.write_text(_config_text(node3=f"listen = {listen}\n"))
    with pytest.raises(ConfigError) as info:
        ClusterConfig.load(path)
    assert "nodes[3].listen" in str(info.value) and message in str(info.value)


def test_an_unspecified_address_is_fine_to_listen_on_but_not_to_advertise(tmp_path):
    """0.0.0.0 is where a node may listen (every interface, behind NAT), never the
    address peers are told to send to."""
    config = _load(tmp_path, _config_text(node3='listen = "0.0.0.0:7003"\n'))
    assert config.node(3).listen == ("0.0.0.0", 7003)
    bad = _config_text().replace('address = "127.0.0.1:7003"', 'address = "0.0.0.0:7003"')
    with pytest.raises(ConfigError, match="not an address peers can send to"):
        _load(tmp_path, bad)


def test_direct_construction_checks_listen():
    with pytest.raises(ConfigError, match="nodes\\[1\\].listen"):
        ClusterConfig.local(4, nodes=tuple(
            NodeAddress(i, "127.0.0.1", 7000 + i, listen=("127.0.0.1", 70000) if i == 1 else None)
            for i in range(4)))


def test_listen_and_admin_key_survive_the_toml_round_trip(tmp_path):
    """What the launcher writes (bft/launcher.py config_to_toml) reads back equal."""
    config = _load(tmp_path, _config_text(node3='listen = "0.0.0.0:7103"\n',
                                          admin=_hex("admin")))
    again = ClusterConfig.from_dict(__import__("tomllib").loads(config_to_toml(config)),
                                    source=config.source)
    assert again == config


# ---------------------------------------------------------------------- the runtime


async def test_a_node_binds_listen_and_peers_send_to_its_advertised_address(tmp_path):
    """Node 3 listens on the wildcard address at one port while the config advertises
    127.0.0.1 at that port: node 3's socket is bound to `listen`, the peers' tables hold
    the advertised address, and the four nodes commit together (node 3 included: its
    datagrams leave from the advertised address, so its peers accept them). Failed before
    the fix: no `listen` field (TypeError), and the node bound its advertised address."""
    ports = free_udp_ports(4)
    nodes_ = tuple(NodeAddress(i, "127.0.0.1", ports[i],
                               listen=("0.0.0.0", ports[i]) if i == 3 else None)
                   for i in range(4))
    keys = Ed25519Keys(4, 1, seed=5)
    config = ClusterConfig.local(4, clients=1, fsync="never", nodes=nodes_)
    nodes = [Node(config, i, signer=keys.signer("replica", i), verifier=keys.verifier(),
                  state_dir=tmp_path / f"n{i}") for i in range(4)]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        assert nodes[3].endpoint is not None and nodes[0].endpoint is not None
        assert nodes[3].endpoint.address == ("0.0.0.0", ports[3])
        assert nodes[0].endpoint.address == ("127.0.0.1", ports[0])
        assert nodes[0].endpoint.peers[3] == ("127.0.0.1", ports[3])
        client = ClusterClient(config, 0, signer=keys.signer("client", 0),
                               verifier=keys.verifier())
        try:
            with trio.fail_after(20):
                for k in range(5):
                    result = await client.call(Ops.put(f"k{k}", b"v"), timeout_s=10)
                    assert decode_result(result).kind == "ok"
                while len({n.replica.last_executed for n in nodes}) != 1:
                    await trio.sleep(0.01)
        finally:
            client.close()
        assert len({n.state_digest() for n in nodes}) == 1
        # node 3 took part: its peers did not drop its datagrams as coming from elsewhere
        assert all(n.stats.drops["replica_address_mismatch"] == 0 for n in nodes)
        assert nodes[3].replica.last_executed == 5
        nursery.cancel_scope.cancel()


def test_a_client_binds_where_it_runs_not_where_node_0_is():
    """`bft client` on a host other than node 0's: its socket binds the wildcard address
    (port 0), so it works from any host; on node 0's host (a local cluster) it still binds
    that address. Failed before the fix: it bound node 0's host (192.0.2.1, TEST-NET: not
    an address of this machine) and failed with `cannot bind`."""
    config = ClusterConfig.local(4, nodes=tuple(NodeAddress(i, f"192.0.2.{i + 1}", 7100)
                                                for i in range(4)))
    mux = ClientMux(config)
    try:
        host, port = mux.endpoint.address[:2]
        assert host == "0.0.0.0" and port > 0
        assert mux.endpoint.peers[0] == ("192.0.2.1", 7100)
    finally:
        mux.close()
    local = ClusterConfig.local(4)
    mux = ClientMux(local)
    try:
        assert mux.endpoint.address[0] == "127.0.0.1"
    finally:
        mux.close()
    v6 = ClusterConfig.local(4, nodes=tuple(NodeAddress(i, "2001:db8::1", 7100 + i)
                                            for i in range(4)))
    try:
        mux = ClientMux(v6)
    except OSError as exc:  # no IPv6 on this machine (a bind error; anything else is a bug)
        pytest.skip(f"no IPv6: {exc}")
    try:
        assert mux.endpoint.address[0] == "::"
    finally:
        mux.close()


def test_a_node_whose_address_is_not_local_says_to_set_listen(tmp_path, capsys):
    """`bft node` for a node advertised at an address this machine does not have (a
    NAT's or a cloud's public address) and no `listen`: exit 2 with an error naming the
    address and the `listen` fix, no traceback. Failed before the fix: only `cannot bind
    UDP 192.0.2.1:7100: Cannot assign requested address`, nothing on what to do."""
    path = tmp_path / "mh.toml"
    text = _config_text(admin=_hex("admin")).replace('address = "127.0.0.1:7000"',
                                                     'address = "192.0.2.1:7100"')
    path.write_text(text)
    keys = tmp_path / "keys"
    keys.mkdir()
    save_private_key(keys / "replica-0.key", KEYS.private_keys[("replica", 0)])
    assert main(["node", str(path), "--id", "0", "--key-dir", str(keys),
                 "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "cannot bind UDP 192.0.2.1:7100" in err
    assert 'listen = "0.0.0.0:7100"' in err and "nodes[0]" in err


def test_the_readme_recipe_names_what_the_netns_test_runs():
    """README "Running across several hosts" and tests/cluster/test_netns.py (which
    follows it on namespaces) name the same commands and config lines, so neither drifts
    alone."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("### Running across several hosts")
    section = readme[start:readme.index("\n### ", start + 1)]
    for step in ("bft config new --nodes 4 --hosts", "--monitor", "--clients 2",
                 "bft keygen cluster.toml --only replica-2 --key-dir keys",
                 "--only client-0,client-1", "--only admin", 'public_key = "..."',
                 "[[clients]]", "[admin]", 'listen = "0.0.0.0:7103"',
                 "bft config check cluster.toml --key-dir keys", "all N public keys found",
                 "bft node cluster.toml --id N --key-dir keys",
                 "bft client cluster.toml --key-dir keys put",
                 "bft ctl cluster.toml --key-dir keys --node 2 crash"):
        assert step in section, step
