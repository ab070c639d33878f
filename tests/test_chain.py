"""chain/: keys, genesis, and real geth v1.13.15 Clique networks on loopback."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import psutil
import pytest
from eth_account import Account
from eth_utils import to_checksum_address
from web3.exceptions import TransactionIndexingInProgress, TransactionNotFound

from chain import genesis as gen
from chain import keys
from chain.geth import GethError, check_geth
from chain.network import Network, load_nodes, rpc, rpc_node_of, stop_run


def _transfer(sender, to: str, nonce: int, base_fee: int) -> bytes:
    tx = {"to": to, "value": 10**15, "gas": 21000, "nonce": nonce, "type": 2,
          "chainId": gen.CHAIN_ID, **gen.tx_fees(base_fee)}
    return sender.sign_transaction(tx).raw_transaction


def _wait_receipt(w3, tx_hash, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return w3.eth.get_transaction_receipt(tx_hash)
        except (TransactionNotFound, TransactionIndexingInProgress) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"no receipt for {tx_hash.hex()}: {e}") from e
            time.sleep(0.05)


def _assert_no_geth(pids: list[int]) -> None:
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", pid


# ---- keys and genesis (no geth) ---------------------------------------------------------

def test_keys_one_file_each_private_and_reused(tmp_path):
    op = keys.ensure_operator(tmp_path)
    dev = keys.ensure_device(tmp_path, "home01")
    sig = keys.ensure_signer(tmp_path, "signer0")
    dev_file = tmp_path / "keys" / "devices" / "home01.key"
    for path in (keys.operator_path(tmp_path), dev_file, keys.signer_path(tmp_path, "signer0"),
                 keys.password_path(keys.signer_path(tmp_path, "signer0"))):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert keys.load_account(dev_file).address == dev.address
    assert keys.load_account(keys.signer_path(tmp_path, "signer0")).address == sig.address
    # idempotent: a restart keeps every address
    assert keys.ensure_operator(tmp_path).address == op.address
    assert keys.ensure_device(tmp_path, "home01").address == dev.address
    assert keys.ensure_signer(tmp_path, "signer0").address == sig.address
    with pytest.raises(ValueError, match="device id"):
        keys.ensure_device(tmp_path, "../x")
    (tmp_path / "bad.key").write_text("nope")
    with pytest.raises(ValueError, match="bad.key"):
        keys.load_account(tmp_path / "bad.key")


def test_genesis_clique_london():
    a, b = Account.create().address, Account.create().address
    g = gen.make_genesis([a], fund=[b], period=0)
    cfg = g["config"]
    assert cfg["londonBlock"] == 0 and cfg["clique"] == {"period": 0, "epoch": gen.EPOCH}
    assert not {"shanghaiTime", "cancunTime", "terminalTotalDifficulty"} & cfg.keys()
    assert g["extraData"] == "0x" + "00" * 32 + a[2:].lower() + "00" * 65
    assert {a[2:].lower(), b[2:].lower()} == g["alloc"].keys()
    assert int(g["gasLimit"], 16) == 100_000_000
    with pytest.raises(ValueError, match="period 0 only works with one signer"):
        gen.make_genesis([a, b, Account.create().address], fund=[], period=0)
    with pytest.raises(ValueError, match="odd"):
        gen.validate_signers(2, 1)


# ---- real networks ----------------------------------------------------------------------

def _listeners(port: int) -> set[str]:
    """Local addresses listening on TCP `port` (from /proc/net/tcp, IPv4, and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:  # 0A: LISTEN
                found.add(addr)
    return found


def _assert_not_exposed(net: Network) -> None:
    """p2p on loopback only; a signer (unlocked account) serves no HTTP/WS at all, only its
    IPC socket in a folder of this user's; members serve HTTP/WS without admin, miner or
    clique, and refuse a foreign Host or Origin (a web page's DNS rebinding or
    cross-origin WebSocket); keys and datadirs private to the user."""
    import urllib.error
    import urllib.request

    import websockets.sync.client as wsc

    for name, info in net.nodes.items():
        assert _listeners(info.p2p_port) == {"0100007F"}, name  # 127.0.0.1 only
        sock = Path(info.ipc)
        assert sock.is_socket() and sock.parent.stat().st_mode & 0o777 == 0o700, name
        assert rpc(info.rpc_url, "admin_peers") is not None  # IPC: every API, this user
        body = b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'
        datadir = Path(info.datadir)
        assert datadir.stat().st_mode & 0o777 == 0o700, name
        for f in [datadir / "geth" / "nodekey", *datadir.glob("keystore/*")]:
            assert f.stat().st_mode & 0o777 == 0o600, f
        if info.role == "signer":
            assert not _listeners(info.http_port) and not _listeners(info.ws_port), name
            argv = psutil.Process(net.pid(name)).cmdline()
            assert not {"--http", "--ws", "--allow-insecure-unlock"} & set(argv), argv
            continue
        for method in ("admin_peers", "admin_addPeer", "miner_start", "clique_getSigner",
                       "personal_listAccounts"):
            with pytest.raises(GethError, match="does not exist|not available"):
                rpc(info.http_url, method)
        req = urllib.request.Request(info.http_url, body, {
            "Content-Type": "application/json", "Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(req, timeout=10)
        assert ei.value.code == 403, name
        with pytest.raises(Exception, match="403"):
            wsc.connect(info.ws_url, origin="http://evil.example", open_timeout=10)
        with wsc.connect(info.ws_url, open_timeout=10) as ws:  # a local client: allowed
            ws.send(body.decode())
            assert "result" in ws.recv(timeout=10)


def test_network_one_signer_three_members(tmp_path):
    check_geth()
    sender = keys.ensure_device(tmp_path, "dev0")
    to = Account.create().address
    with Network.start(tmp_path, members=3, signers=1, period=0,
                       fund=[sender.address]) as net:
        pids = [net.pid(n) for n in net.nodes]
        assert all(pids) and len(net.nodes) == 4
        # metadata for other processes
        meta = json.loads((tmp_path / "chain" / "network.json").read_text())
        urls = {n["name"]: n["http_url"] for n in meta["nodes"]}
        assert urls["member1"] == net.nodes["member1"].http_url
        assert urls["signer0"] is None  # a signer serves no HTTP
        # the lab talks to the first signer, over IPC (chain.network.rpc_node_of)
        assert meta["rpc_node"] == net.rpc_node() == "signer0"
        assert rpc_node_of(tmp_path).rpc_url == f"ipc://{net.nodes['signer0'].ipc}"
        assert net.ws_url("member1").startswith("ws://127.0.0.1:")
        # peered, same head
        for m in net.members():
            peers = {p["enode"].split("@")[0] for p in rpc(net.rpc_url(m), "admin_peers")}
            assert net.nodes["signer0"].enode.split("@")[0] in peers
        heads = {net.w3(n).eth.get_block("latest")["hash"] for n in net.nodes}
        assert len(heads) == 1
        _assert_not_exposed(net)
        # a transfer sent through member0 is mined and seen on every node
        w3 = net.w3("member0")
        base = w3.eth.get_block("latest")["baseFeePerGas"]
        h = w3.eth.send_raw_transaction(_transfer(sender, to, 0, base))
        rcpt = _wait_receipt(w3, h)
        assert rcpt["status"] == 1
        for n in net.nodes:
            r = _wait_receipt(net.w3(n), h)
            assert r["blockHash"] == rcpt["blockHash"], n
            assert net.w3(n).eth.get_balance(to) == 10**15, n
        # a restarted member resumes on its data and follows new blocks
        net.restart_node("member2")
        h2 = net.w3("member1").eth.send_raw_transaction(_transfer(sender, to, 1, base))
        rcpt2 = _wait_receipt(net.w3("member2"), h2)
        assert rcpt2["blockNumber"] > rcpt["blockNumber"]
        pids.append(net.pid("member2"))
    _assert_no_geth(pids)
    assert all(n.pid is None for n in load_nodes(tmp_path).values())
    assert stop_run(tmp_path) == 0

    # the whole network resumes from the run folder with its chain
    with Network.start(tmp_path, members=3, signers=1, period=0, fund=[sender.address]) as net:
        assert net.w3("member0").eth.get_balance(to) == 2 * 10**15
        pids = [net.pid(n) for n in net.nodes]
    _assert_no_geth(pids)


def test_three_signers_survive_one_stopped(tmp_path):
    check_geth()
    with Network.start(tmp_path, members=1, signers=3, period=1) as net:
        pids = [net.pid(n) for n in net.nodes]
        w3 = net.w3("member0")
        start = w3.eth.block_number
        deadline = time.monotonic() + 15
        while w3.eth.block_number < start + 2:
            assert time.monotonic() < deadline, "3 signers made no blocks"
            time.sleep(0.2)
        net.stop_node("signer2")
        stopped_at = net.w3("signer0").eth.block_number
        deadline = time.monotonic() + 20
        while w3.eth.block_number < stopped_at + 3:  # 2 of 3 signers alternate
            assert time.monotonic() < deadline, "chain stalled with 2 of 3 signers"
            time.sleep(0.2)
        # the blocks after the stop are sealed by the two live signers only
        live = {net.nodes[s].signer_address for s in ("signer0", "signer1")}
        top = w3.eth.block_number
        sealers = {rpc(net.rpc_url("signer0"), "clique_getSigner", [hex(b)])
                   for b in range(stopped_at + 2, top + 1)}
        assert {to_checksum_address(a) for a in sealers} == live
    _assert_no_geth(pids)
