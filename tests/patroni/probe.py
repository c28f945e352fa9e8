"""Looks at a Patroni cluster and at its keys in Rampart, for tests/patroni/run.

Each subcommand prints one answer on stdout and exits 0, or prints why not on stderr and exits 1
(a node that does not answer, a key that is missing), so that the script can poll it:

  node REST_URL                  the node's own view (GET /patroni): "ROLE STATE REPLICATION_STATE"
                                 (e.g. "primary running -", "replica streaming streaming")
  leader PREFIX GATEWAY_URL...   the leader key under PREFIX: "NAME MOD_REVISION"
  members PREFIX GATEWAY_URL...  the member keys under PREFIX, one "NAME ROLE STATE" a line
  key KEY GATEWAY_URL...         the value of KEY
  sql PORT QUERY                 runs QUERY on 127.0.0.1:PORT as the superuser, in autocommit,
                                 and prints the first column of each row

The Rampart URLs are tried in turn until one answers, as a client of a cluster with a member
down would; the keys are read with etcd's JSON gateway (POST /v3/kv/range).
"""

import base64
import json
import os
import sys
import urllib.request


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def get_json(url, body=None):
    """GETs url (POSTs body, as JSON, when given) and decodes the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=3) as response:
        return json.load(response)


def b64(text):
    return base64.b64encode(text.encode()).decode()


def prefix_range(prefix, urls):
    """Every key under prefix as {key: kv}, read through the first gateway URL that answers."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    errors = []
    for url in urls:
        try:
            answer = get_json(url + "/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)})
        except Exception as e:  # noqa: BLE001 - any failure moves on to the next member
            errors.append(f"{url}: {e}")
            continue
        kvs = {}
        for kv in answer.get("kvs", []):
            kv["value"] = base64.b64decode(kv.get("value", "")).decode()
            kvs[base64.b64decode(kv["key"]).decode()] = kv
        return kvs
    fail("no Rampart member answered: " + "; ".join(errors))


def node(url):
    try:
        status = get_json(url + "/patroni")
    except Exception as e:  # noqa: BLE001
        fail(f"{url}/patroni: {e}")
    print(status.get("role", "-"), status.get("state", "-"), status.get("replication_state", "-"))


def leader(prefix, urls):
    kv = prefix_range(prefix, urls).get(prefix + "leader")
    if kv is None:
        fail(f"no key {prefix}leader")
    print(kv["value"], kv["mod_revision"])


def members(prefix, urls):
    found = False
    for key, kv in sorted(prefix_range(prefix + "members/", urls).items()):
        data = json.loads(kv["value"])
        print(key.rsplit("/", 1)[1], data.get("role", "-"), data.get("state", "-"))
        found = True
    if not found:
        fail(f"no keys under {prefix}members/")


def key(name, urls):
    kv = prefix_range(name, urls).get(name)
    if kv is None:
        fail(f"no key {name}")
    print(kv["value"])


def sql(port, query):
    import psycopg2  # only this subcommand needs it

    connection = psycopg2.connect(
        host="127.0.0.1",
        port=int(port),
        dbname="postgres",
        user="postgres",
        password=os.environ.get("PGPASSWORD", ""),
        connect_timeout=3,
    )
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(query)
            if cursor.description is not None:
                for row in cursor.fetchall():
                    print(row[0])
    finally:
        connection.close()


def main(args):
    if len(args) >= 2 and args[0] == "node":
        node(args[1])
    elif len(args) >= 3 and args[0] == "leader":
        leader(args[1], args[2:])
    elif len(args) >= 3 and args[0] == "members":
        members(args[1], args[2:])
    elif len(args) >= 3 and args[0] == "key":
        key(args[1], args[2:])
    elif len(args) == 3 and args[0] == "sql":
        try:
            sql(args[1], args[2])
        except Exception as e:  # noqa: BLE001 - psycopg2's errors, reported for the poll
            fail(f"port {args[1]}: {e}".strip())
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
