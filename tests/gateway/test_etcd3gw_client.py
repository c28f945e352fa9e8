"""The Python etcd3gw client (OpenStack's, from PyPI) against Rampart's JSON gateway.

Each test drives one area through etcd3gw's public API only, as an application would: keys,
prefixes, transactions, leases with keys, watches and locks. The member's client URL comes from
RAMPART_GATEWAY_URL (http://127.0.0.1:PORT); tests/gateway/run sets it.
"""

import base64
import os
import queue
import threading
import time
import urllib.parse
import uuid

import pytest
from etcd3gw.client import Etcd3Client

# How long a test waits for something that should happen at once (a watch event).
WAIT = 20


@pytest.fixture(scope="module")
def client():
    url = urllib.parse.urlsplit(os.environ["RAMPART_GATEWAY_URL"])
    client = Etcd3Client(host=url.hostname, port=url.port, timeout=WAIT)
    # etcd3gw reads /version to choose the API prefix: etcd 3.4 and later serve /v3/.
    assert client.api_path == "/v3/"
    return client


@pytest.fixture
def prefix():
    """A key prefix of the test's own, so tests never see each other's keys."""
    return f"/etcd3gw-{uuid.uuid4()}/"


def test_status_and_members(client):
    status = client.status()
    assert status["version"]
    assert status["header"]["cluster_id"]
    members = client.members()
    assert members
    for member in members:
        assert member["name"]
        assert member["peerURLs"]
        assert member["clientURLs"]


def test_put_get_delete(client, prefix):
    key = prefix + "k"
    assert client.get(key) == []
    assert client.put(key, "v1")
    assert client.get(key) == [b"v1"]
    assert client.put(key, b"v2\x00\xff")
    [(value, meta)] = client.get(key, metadata=True)
    assert value == b"v2\x00\xff"
    assert meta["key"] == key.encode()
    assert int(meta["version"]) == 2
    assert int(meta["mod_revision"]) > int(meta["create_revision"])
    assert client.delete(key)
    assert client.get(key) == []
    # etcd answers a delete of nothing with no "deleted" field; etcd3gw reads it as True only
    # when "deleted" is there.
    assert not client.delete(key)


def test_get_and_delete_prefix(client, prefix):
    for i in range(12):
        client.put(f"{prefix}range/{i:02}", f"value {i}")
    client.put(prefix + "rangeless", "outside")
    found = client.get_prefix(prefix + "range/", sort_order="descend", sort_target="key")
    assert [meta["key"] for _, meta in found] == [
        f"{prefix}range/{i:02}".encode() for i in reversed(range(12))
    ]
    assert [value for value, _ in found][0] == b"value 11"
    assert client.delete_prefix(prefix + "range/")
    assert client.get_prefix(prefix + "range/") == []
    assert client.get(prefix + "rangeless") == [b"outside"]
    assert client.get(prefix + "range/", count_only=True) == []


def test_transactions(client, prefix):
    key = prefix + "txn"
    assert client.create(key, "first")
    assert not client.create(key, "second")
    assert client.get(key) == [b"first"]
    assert client.replace(key, "first", "third")
    assert not client.replace(key, "first", "fourth")
    assert client.get(key) == [b"third"]
    result = client.transaction(
        {
            "compare": [{"key": client_b64(key), "result": "EQUAL", "target": "VALUE",
                         "value": client_b64("third")}],
            "success": [{"request_range": {"key": client_b64(key)}},
                        {"request_delete_range": {"key": client_b64(key), "prev_kv": True}}],
            "failure": [],
        }
    )
    assert result["succeeded"] is True
    ranged, deleted = result["responses"]
    assert ranged["response_range"]["count"] == "1"
    assert deleted["response_delete_range"]["deleted"] == "1"
    assert deleted["response_delete_range"]["prev_kvs"][0]["value"] == client_b64("third")
    assert client.get(key) == []


def client_b64(text):
    return base64.b64encode(text.encode()).decode()


def test_leases_with_keys(client, prefix):
    lease = client.lease(ttl=30)
    assert 0 < lease.ttl() <= 30
    assert lease.keys() == []
    assert client.put(prefix + "a", "1", lease)
    assert client.put(prefix + "b", "2", lease)
    assert sorted(lease.keys()) == [(prefix + "a").encode(), (prefix + "b").encode()]
    assert 0 < lease.refresh() <= 30
    assert lease.revoke()
    # The lease's keys went with it.
    assert client.get_prefix(prefix) == []
    assert lease.ttl() == -1
    # A keep-alive of a lease that no longer exists answers TTL 0 (etcd's), not an error; 0 is
    # left out of the JSON, which etcd3gw reads as -1.
    assert lease.refresh() == -1


def test_a_short_lease_expires_with_its_key(client, prefix):
    lease = client.lease(ttl=2)
    client.put(prefix + "short", "lived", lease)
    deadline = time.monotonic() + WAIT
    while client.get(prefix + "short"):
        assert time.monotonic() < deadline, "the lease's key outlived it"
        time.sleep(0.2)


def test_watch_delivers_puts_and_deletes(client, prefix):
    key = prefix + "watched"
    events, cancel = client.watch(key)
    received = queue.Queue()

    def read():
        for event in events:
            received.put(event)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    # The watch is created when its "created" line arrives, which etcd3gw does not show: write
    # until the first event comes, then the rest.
    deadline = time.monotonic() + WAIT
    first = None
    while first is None:
        assert time.monotonic() < deadline, "no event from the watch"
        client.put(key, "0")
        try:
            first = received.get(timeout=0.5)
        except queue.Empty:
            pass
    client.put(key, "1")
    client.delete(key)
    second = received.get(timeout=WAIT)
    while second["kv"]["value"] == b"0":  # one more of the first writes
        second = received.get(timeout=WAIT)
    third = received.get(timeout=WAIT)
    cancel()
    assert first["kv"]["key"] == key.encode()
    assert "type" not in first  # PUT is the default, left out
    assert second["kv"]["value"] == b"1"
    assert third["type"] == "DELETE"
    assert third["kv"]["key"] == key.encode()


def test_watch_prefix_once_and_from_a_revision(client, prefix):
    client.put(prefix + "old", "before")
    [(_, meta)] = client.get(prefix + "old", metadata=True)
    # A watch from an earlier revision replays it at once.
    event = client.watch_prefix_once(
        prefix, timeout=WAIT, start_revision=int(meta["mod_revision"])
    )
    assert event["kv"]["key"] == (prefix + "old").encode()
    assert event["kv"]["value"] == b"before"


def test_locks(client, prefix):
    name = prefix + "lock"
    first = client.lock(id=name, ttl=30)
    second = client.lock(id=name, ttl=30)
    assert first.acquire()
    assert first.is_acquired()
    assert not second.acquire()
    assert 0 < first.refresh() <= 30
    assert first.release()
    assert not first.is_acquired()
    assert second.acquire()
    assert second.release()
    with client.lock(id=name, ttl=30) as held:
        assert held.is_acquired()
    assert not held.is_acquired()
