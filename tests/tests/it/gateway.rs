//! The JSON gateway (etcd 3.4's HTTP/JSON API on the client port): its JSON, its errors, its
//! streams (watch, lease keep-alive), locks and elections, through plain HTTP/1.1; and the
//! Python `etcd3gw` client from PyPI, with its own functional suite, against a three-member
//! cluster (`tests/gateway/run`).

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tracing::info;

use rampart_tests::TestCluster;

use crate::common::Etcd;

const WAIT: Duration = Duration::from_secs(20);

/// One HTTP answer: its status, content type, CORS headers and body (a chunked body decoded).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    /// Its `Access-Control-*` headers, as `name: value` with the name in lower case, sorted:
    /// what `--cors` decides.
    pub(crate) access_control: Vec<String>,
    pub(crate) body: String,
}

impl Answer {
    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {:?}", self.body))
    }
}

/// The head of an HTTP request to `address` (`host:port`), with `headers` besides the usual (a
/// `Host` among them replaces `address` there).
fn request_head(
    method: &str,
    path: &str,
    address: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        head.push_str(&format!("Host: {address}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

/// What the head of a response says: its status, content type, `Access-Control-*` headers and
/// whether the body is chunked.
struct Head {
    status: u16,
    content_type: String,
    access_control: Vec<String>,
    chunked: bool,
}

/// Reads a response's status line and headers.
async fn read_head(reader: &mut BufReader<TcpStream>) -> anyhow::Result<Head> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no status line: {line:?}"))?
        .parse()?;
    let mut head = Head {
        status,
        content_type: String::new(),
        access_control: Vec::new(),
        chunked: false,
    };
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        let header = line.trim_end();
        if header.is_empty() {
            head.access_control.sort();
            return Ok(head);
        }
        let (name, value) = header.split_once(':').context("a header without a colon")?;
        let (name, value) = (name.to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-type" => head.content_type = value.to_string(),
            "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
            _ if name.starts_with("access-control-") => {
                head.access_control.push(format!("{name}: {value}"))
            }
            _ => {}
        }
    }
}

/// The next chunk of a chunked body; `None` after the last.
async fn read_chunk(reader: &mut BufReader<TcpStream>) -> anyhow::Result<Option<Vec<u8>>> {
    let mut size = String::new();
    reader.read_line(&mut size).await?;
    let size = usize::from_str_radix(size.trim(), 16)
        .with_context(|| format!("a bad chunk size {size:?}"))?;
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).await?;
    chunk.truncate(size);
    Ok((size > 0).then_some(chunk))
}

/// Sends `body` to `path` of the member at `url` with `method` and reads the whole answer.
async fn send(url: &str, method: &str, path: &str, body: &[u8]) -> anyhow::Result<Answer> {
    send_with(url, method, path, &[], body).await
}

/// [`send`] with `headers` besides the usual.
pub(crate) async fn send_with(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Answer> {
    let address = url.trim_start_matches("http://");
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        let head = request_head(method, path, address, headers, body, true);
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut reader = BufReader::new(stream);
        let head = read_head(&mut reader).await?;
        let mut read = Vec::new();
        if head.chunked {
            while let Some(chunk) = read_chunk(&mut reader).await? {
                read.extend(chunk);
            }
        } else {
            reader.read_to_end(&mut read).await?;
        }
        anyhow::Ok(Answer {
            status: head.status,
            content_type: head.content_type,
            access_control: head.access_control,
            body: String::from_utf8(read)?,
        })
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .with_context(|| format!("{method} {url}{path} did not answer in time"))?
        .with_context(|| format!("{method} {url}{path}"))
}

/// [`send_with`] to the real etcd, sent again (up to 5 times in all) when the connection is
/// reset. etcd 3.4's Go server closes a connection without reading a request body its handler
/// left unread, so the body that follows the request's head can meet a closed socket and the
/// reset can reach the client before the answer does (95 of 2,000 POSTs to an unknown path
/// here, none from Rampart). Only etcd's answers are sent again: Rampart's must not reset.
async fn etcds_answer(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Answer> {
    let mut tries = 1;
    loop {
        match send_with(url, method, path, headers, body).await {
            Err(e) if tries < 5 && was_reset(&e) => tries += 1,
            answer => return answer,
        }
    }
}

fn was_reset(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
    })
}

async fn post(url: &str, path: &str, body: Value) -> anyhow::Result<Answer> {
    send(url, "POST", path, body.to_string().as_bytes()).await
}

/// POSTs `body` to `path` and returns its JSON answer, which must be a success.
async fn call(url: &str, path: &str, body: Value) -> anyhow::Result<Value> {
    let answer = post(url, path, body).await?;
    ensure!(answer.status == 200, "{path}: {answer:?}");
    ensure!(answer.content_type == "application/json", "{answer:?}");
    answer.json()
}

/// A streamed answer read line by line as it comes: `{"result": ...}` lines.
struct Lines {
    reader: BufReader<TcpStream>,
    pending: Vec<u8>,
}

impl Lines {
    /// POSTs `body` (sent whole, so the request ends) to `path` and reads the answer's head.
    async fn open(url: &str, path: &str, body: &str) -> anyhow::Result<(u16, Lines)> {
        let address = url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).await?;
        let head = request_head("POST", path, address, &[], body.as_bytes(), false);
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut reader = BufReader::new(stream);
        let head = tokio::time::timeout(WAIT, read_head(&mut reader)).await??;
        ensure!(head.chunked, "{path} did not answer a stream");
        let pending = Vec::new();
        Ok((head.status, Lines { reader, pending }))
    }

    /// The next line, as JSON; `None` when the stream ended.
    async fn next(&mut self) -> anyhow::Result<Option<Value>> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Ok(Some(serde_json::from_slice(&line)?));
            }
            let chunk = tokio::time::timeout(WAIT, read_chunk(&mut self.reader))
                .await
                .context("no line in time")??;
            match chunk {
                Some(chunk) => self.pending.extend(chunk),
                None if self.pending.is_empty() => return Ok(None),
                // The last line of a stream that failed has no newline.
                None => {
                    let line = std::mem::take(&mut self.pending);
                    return Ok(Some(serde_json::from_slice(&line)?));
                }
            }
        }
    }

    /// The next line's `result`.
    async fn result(&mut self) -> anyhow::Result<Value> {
        let line = self.next().await?.context("the stream ended")?;
        line.get("result")
            .cloned()
            .with_context(|| format!("not a result: {line}"))
    }
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// `value` without its `header` (whose ids and term differ from run to run), after checking that
/// it has one with etcd's four fields as strings.
fn without_header(mut value: Value) -> anyhow::Result<Value> {
    let header = value
        .as_object_mut()
        .context("not an object")?
        .remove("header")
        .with_context(|| format!("no header in {value}"))?;
    for field in ["cluster_id", "member_id", "revision", "raft_term"] {
        ensure!(header[field].is_string(), "header {field} in {header}");
    }
    Ok(value)
}

fn revision(value: &Value) -> anyhow::Result<i64> {
    Ok(value["header"]["revision"]
        .as_str()
        .context("no revision")?
        .parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_calls_read_and_write_etcds_json() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1).await?;
    cluster.wait_for_leader(WAIT).await?;
    let url = &cluster.client_urls()[0];

    info!("--- /version tells clients to use /v3/");
    let version = send(url, "GET", "/version", b"").await?;
    ensure!(version.status == 200, "{version:?}");
    let version = version.json()?;
    ensure!(
        version["etcdserver"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{version}"
    );
    ensure!(
        version["etcdcluster"]
            .as_str()
            .is_some_and(|v| v.ends_with(".0")),
        "{version}"
    );

    info!("--- put, with ints as numbers or strings, bytes as base64");
    let put = call(
        url,
        "/v3/kv/put",
        json!({"key": b64("foo"), "value": b64("bar")}),
    )
    .await?;
    let first = revision(&put)?;
    ensure!(
        without_header(put)? == json!({}),
        "a put answers its header only"
    );
    let put = call(
        url,
        "/v3/kv/put",
        json!({"key": b64("foo"), "value": b64("baz"), "prev_kv": true}),
    )
    .await?;
    ensure!(
        without_header(put)?
            == json!({"prev_kv": {"key": b64("foo"), "create_revision": first.to_string(),
                      "mod_revision": first.to_string(), "version": "1", "value": b64("bar")}}),
        "prev_kv as etcd writes it"
    );

    info!("--- range: defaults left out, 64-bit ints as strings; /v3beta/ the same");
    let expected = json!({
        "kvs": [{"key": b64("foo"), "create_revision": first.to_string(),
                 "mod_revision": (first + 1).to_string(), "version": "2", "value": b64("baz")}],
        "count": "1"
    });
    for prefix in ["/v3", "/v3beta"] {
        let range = call(
            url,
            &format!("{prefix}/kv/range"),
            json!({"key": b64("foo")}),
        )
        .await?;
        ensure!(
            without_header(range.clone())? == expected,
            "{prefix}: {range}"
        );
    }
    let missing = call(url, "/v3/kv/range", json!({"key": b64("nothing")})).await?;
    ensure!(
        without_header(missing)? == json!({}),
        "an empty range has no kvs nor count"
    );
    let counted = call(
        url,
        "/v3/kv/range",
        json!({"key": b64("a"), "range_end": b64("z"), "count_only": true, "sort_order": "DESCEND",
               "sort_target": 1, "limit": "5"}),
    )
    .await?;
    ensure!(without_header(counted)? == json!({"count": "1"}));

    info!("--- txn: compare by name, oneofs by field name, nested responses");
    let txn = call(
        url,
        "/v3/kv/txn",
        json!({
            "compare": [{"key": b64("foo"), "result": "EQUAL", "target": "VALUE", "value": b64("baz")},
                        {"key": b64("new"), "target": "CREATE", "create_revision": 0}],
            "success": [{"request_put": {"key": b64("new"), "value": b64("1")}},
                        {"request_range": {"key": b64("foo"), "keys_only": true}}],
            "failure": [{"request_delete_range": {"key": b64("foo")}}]
        }),
    )
    .await?;
    let txn_revision = revision(&txn)?;
    ensure!(
        without_header(txn.clone())?
            == json!({"succeeded": true, "responses": [
                {"response_put": {"header": {"revision": txn_revision.to_string()}}},
                {"response_range": {"header": {"revision": txn_revision.to_string()},
                    "kvs": [{"key": b64("foo"), "create_revision": first.to_string(),
                             "mod_revision": (first + 1).to_string(), "version": "2"}],
                    "count": "1"}}]}),
        "{txn}"
    );

    info!("--- deleterange and compaction");
    let deleted = call(
        url,
        "/v3/kv/deleterange",
        json!({"key": b64("a"), "range_end": b64("z"), "prev_kv": true}),
    )
    .await?;
    let deleted = without_header(deleted)?;
    ensure!(deleted["deleted"] == "2", "{deleted}");
    ensure!(
        deleted["prev_kvs"].as_array().map(Vec::len) == Some(2),
        "{deleted}"
    );
    let compacted = call(url, "/v3/kv/compaction", json!({"revision": first + 1})).await?;
    ensure!(without_header(compacted)? == json!({}));
    let old = post(
        url,
        "/v3/kv/range",
        json!({"key": b64("foo"), "revision": first}),
    )
    .await?;
    ensure!(old.status == 400, "{old:?}");
    ensure!(
        old.json()?
            == json!({"error": "etcdserver: mvcc: required revision has been compacted",
                      "message": "etcdserver: mvcc: required revision has been compacted",
                      "code": 11}),
        "{old:?}"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1).await?;
    cluster.wait_for_leader(WAIT).await?;
    let url = &cluster.client_urls()[0];

    info!("--- etcd's errors, with grpc-gateway's status and body");
    let no_key = post(url, "/v3/kv/put", json!({"value": b64("v")})).await?;
    ensure!(no_key.status == 400, "{no_key:?}");
    ensure!(no_key.content_type == "application/json");
    ensure!(
        no_key.json()?
            == json!({"error": "etcdserver: key is not provided",
                      "message": "etcdserver: key is not provided", "code": 3})
    );
    let no_lease = post(url, "/v3/lease/revoke", json!({"ID": "12345"})).await?;
    ensure!(no_lease.status == 404, "{no_lease:?}");
    ensure!(no_lease.json()?["error"] == "etcdserver: requested lease not found");

    info!("--- bad JSON, unknown fields, wrong types, trailing data: 400, nothing written");
    for body in [
        &br#"{"key": "Zm9v", "value": "YmFy""#[..],
        br#"{"key": "Zm9v", "valeu": "YmFy"}"#,
        br#"{"key": 12}"#,
        br#"{"key": "Zm9v", "lease": "soon"}"#,
        br#"{"key": "not base64!"}"#,
        br#"{"key": "Zm9v"} {"key": "YmFy"}"#,
        br#"[]"#,
    ] {
        let answer = send(url, "POST", "/v3/kv/put", body).await?;
        ensure!(
            answer.status == 400,
            "{}: {answer:?}",
            String::from_utf8_lossy(body)
        );
        let error = answer.json()?;
        ensure!(error["code"] == 3, "{error}");
        let message = error["message"].as_str().unwrap_or_default();
        ensure!(message.contains("invalid JSON for PutRequest"), "{error}");
    }
    let range = call(url, "/v3/kv/range", json!({"key": b64("foo")})).await?;
    ensure!(
        without_header(range)? == json!({}),
        "a refused put wrote nothing"
    );

    info!("--- a body over the limit is refused without being read whole");
    let huge = format!(r#"{{"key": "Zm9v", "value": "{}"}}"#, "A".repeat(6 << 20));
    let answer = send(url, "POST", "/v3/kv/put", huge.as_bytes()).await?;
    ensure!(answer.status == 400, "{answer:?}");
    ensure!(answer.json()?["error"] == "etcdserver: request is too large");
    // Under the body limit but over --max-request-bytes: the service's own check.
    let large = json!({"key": b64("k"), "value": "A".repeat(2 << 20)});
    let answer = post(url, "/v3/kv/put", large).await?;
    ensure!(answer.status == 400, "{answer:?}");
    ensure!(answer.json()?["error"] == "etcdserver: request is too large");

    info!("--- unknown paths, wrong methods, auth");
    let unknown = post(url, "/v3/kv/nothing", json!({})).await?;
    ensure!(
        unknown.status == 404 && unknown.body == "Not Found\n",
        "{unknown:?}"
    );
    let get = send(url, "GET", "/v3/kv/range", b"").await?;
    ensure!(get.status == 405, "{get:?}");
    let auth = call(url, "/v3/auth/status", json!({})).await?;
    ensure!(
        without_header(auth)? == json!({"authRevision": "1"}),
        "auth is disabled: enabled false, left out; a store never changed is at revision 1"
    );
    let user_add = post(url, "/v3/auth/user/add", json!({"name": ""})).await?;
    ensure!(user_add.status == 400, "{user_add:?}");
    ensure!(user_add.json()?["error"] == "etcdserver: user name is empty");
    ensure!(user_add.json()?["code"] == 3);

    info!("--- the gRPC API still answers on the same port");
    let mut client = cluster.client(0).await?;
    rampart_tests::put(&mut client, "grpc", "still").await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_events_as_lines() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1).await?;
    cluster.wait_for_leader(WAIT).await?;
    let url = &cluster.client_urls()[0];
    let start = revision(
        &call(
            url,
            "/v3/kv/put",
            json!({"key": b64("w/0"), "value": b64("a")}),
        )
        .await?,
    )?;

    info!("--- a watch of a prefix from an earlier revision, with prev_kv");
    let create = json!({"create_request": {"key": b64("w/"), "range_end": b64("w0"),
                        "start_revision": start, "prev_kv": true}});
    let (status, mut lines) = Lines::open(url, "/v3/watch", &create.to_string()).await?;
    ensure!(status == 200);
    let created = lines.result().await?;
    ensure!(created["created"] == true, "{created}");
    let replayed = lines.result().await?;
    ensure!(
        replayed["events"]
            == json!([{"kv": {"key": b64("w/0"), "create_revision": start.to_string(),
                              "mod_revision": start.to_string(), "version": "1", "value": b64("a")}}]),
        "{replayed}"
    );

    info!("--- live events: a put with its prev_kv, a delete by name");
    call(
        url,
        "/v3/kv/put",
        json!({"key": b64("w/0"), "value": b64("b")}),
    )
    .await?;
    call(url, "/v3/kv/deleterange", json!({"key": b64("w/0")})).await?;
    call(
        url,
        "/v3/kv/put",
        json!({"key": b64("x"), "value": b64("outside")}),
    )
    .await?;
    let mut events = Vec::new();
    while events.len() < 2 {
        let response = lines.result().await?;
        events.extend(response["events"].as_array().cloned().unwrap_or_default());
    }
    ensure!(
        events[0].get("type").is_none(),
        "PUT is left out: {}",
        events[0]
    );
    ensure!(events[0]["kv"]["value"] == b64("b") && events[0]["prev_kv"]["value"] == b64("a"));
    ensure!(events[1]["type"] == "DELETE", "{}", events[1]);
    ensure!(events[1]["kv"]["key"] == b64("w/0"));

    info!("--- several requests in one body: two watches, then a cancel of the first");
    let body = [
        json!({"create_request": {"key": b64("y")}}).to_string(),
        json!({"create_request": {"key": b64("z"), "watch_id": 7}}).to_string(),
        json!({"cancel_request": {"watch_id": 0}}).to_string(),
    ]
    .join("\n");
    let (_, mut lines) = Lines::open(url, "/v3beta/watch", &body).await?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(lines.result().await?);
    }
    ensure!(
        seen[0]["created"] == true && seen[0].get("watch_id").is_none(),
        "{seen:?}"
    );
    ensure!(
        seen[1]["created"] == true && seen[1]["watch_id"] == "7",
        "{seen:?}"
    );
    ensure!(seen[2]["canceled"] == true, "{seen:?}");
    call(
        url,
        "/v3/kv/put",
        json!({"key": b64("y"), "value": b64("1")}),
    )
    .await?;
    call(
        url,
        "/v3/kv/put",
        json!({"key": b64("z"), "value": b64("2")}),
    )
    .await?;
    let event = lines.result().await?;
    ensure!(
        event["watch_id"] == "7" && event["events"][0]["kv"]["key"] == b64("z"),
        "{event}"
    );

    info!("--- a first request that is no WatchRequest is refused");
    let refused = post(url, "/v3/watch", json!({"create": {"key": b64("y")}})).await?;
    ensure!(refused.status == 400, "{refused:?}");
    ensure!(refused.json()?["code"] == 3);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_locks_and_elections() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1).await?;
    cluster.wait_for_leader(WAIT).await?;
    let url = &cluster.client_urls()[0];

    info!("--- grant, attach, time to live with keys, keep alive, leases, revoke");
    let granted = call(url, "/v3/lease/grant", json!({"TTL": 30})).await?;
    let id = granted["ID"]
        .as_str()
        .context("ID as a string")?
        .to_string();
    ensure!(granted["TTL"] == "30", "{granted}");
    call(
        url,
        "/v3/kv/put",
        json!({"key": b64("leased"), "value": b64("v"), "lease": id}),
    )
    .await?;
    let alive = call(
        url,
        "/v3/kv/lease/timetolive",
        json!({"ID": id, "keys": true}),
    )
    .await?;
    ensure!(
        alive["grantedTTL"] == "30" && alive["keys"] == json!([b64("leased")]),
        "{alive}"
    );
    let body = format!(r#"{{"ID": "{id}"}} {{"ID": {id}}}"#);
    let (status, mut lines) = Lines::open(url, "/v3/lease/keepalive", &body).await?;
    ensure!(status == 200);
    for _ in 0..2 {
        let renewed = lines.result().await?;
        ensure!(
            renewed["ID"] == id.as_str() && renewed["TTL"] == "30",
            "{renewed}"
        );
    }
    ensure!(
        lines.next().await?.is_none(),
        "the answer ends with the requests"
    );
    let leases = call(url, "/v3/lease/leases", json!({})).await?;
    ensure!(leases["leases"] == json!([{"ID": id}]), "{leases}");
    call(url, "/v3/lease/revoke", json!({"ID": id})).await?;
    let gone = call(url, "/v3/lease/timetolive", json!({"ID": id})).await?;
    ensure!(gone["TTL"] == "-1", "{gone}");
    let range = call(url, "/v3/kv/range", json!({"key": b64("leased")})).await?;
    ensure!(range.get("kvs").is_none(), "the lease's key went with it");
    let (_, mut lines) =
        Lines::open(url, "/v3/lease/keepalive", &format!(r#"{{"ID": {id}}}"#)).await?;
    let expired = lines.result().await?;
    ensure!(
        expired.get("TTL").is_none(),
        "TTL 0 for a lease that is gone: {expired}"
    );

    info!("--- lock and unlock");
    let lock = call(url, "/v3/lock/lock", json!({"name": b64("mutex")})).await?;
    let key = lock["key"].as_str().context("the lock's key")?.to_string();
    // "mutex/" is 6 bytes, so its base64 is a prefix of the key's.
    ensure!(key.starts_with(&b64("mutex/")), "{lock}");
    call(url, "/v3/lock/unlock", json!({"key": key})).await?;

    info!("--- campaign, leader, proclaim, observe, resign");
    let campaign = call(
        url,
        "/v3/election/campaign",
        json!({"name": b64("chair"), "value": b64("alice")}),
    )
    .await?;
    let leader_key = campaign["leader"].clone();
    ensure!(leader_key["name"] == b64("chair"), "{campaign}");
    let leader = call(url, "/v3/election/leader", json!({"name": b64("chair")})).await?;
    ensure!(leader["kv"]["value"] == b64("alice"), "{leader}");
    let (_, mut observed) = Lines::open(
        url,
        "/v3/election/observe",
        &json!({"name": b64("chair")}).to_string(),
    )
    .await?;
    ensure!(observed.result().await?["kv"]["value"] == b64("alice"));
    call(
        url,
        "/v3/election/proclaim",
        json!({"leader": leader_key, "value": b64("bob")}),
    )
    .await?;
    ensure!(observed.result().await?["kv"]["value"] == b64("bob"));
    call(url, "/v3/election/resign", json!({"leader": leader_key})).await?;
    let none = post(url, "/v3/election/leader", json!({"name": b64("chair")})).await?;
    ensure!(
        none.status == 500,
        "etcd's Unknown \"election: no leader\": {none:?}"
    );
    ensure!(none.json()?["error"] == "election: no leader");

    info!("--- maintenance and cluster");
    let status = call(url, "/v3/maintenance/status", json!({})).await?;
    ensure!(
        status["version"].is_string() && status["dbSize"].is_string(),
        "{status}"
    );
    let members = call(url, "/v3/cluster/member/list", json!({})).await?;
    ensure!(
        members["members"].as_array().map(Vec::len) == Some(1),
        "{members}"
    );
    ensure!(members["members"][0]["peerURLs"].is_array(), "{members}");
    let hash = call(url, "/v3/maintenance/hash", json!({})).await?;
    ensure!(hash["hash"].is_number(), "a uint32 is a number: {hash}");
    let alarms = call(url, "/v3/maintenance/alarm", json!({"action": "GET"})).await?;
    ensure!(without_header(alarms)? == json!({}));
    cluster.shutdown().await;
    Ok(())
}

/// A JSON request passes the checks of the gRPC call it becomes: `hasleader` metadata, sent as
/// grpc-gateway forwards metadata (`Grpc-Metadata-hasleader: true`), is refused on a member
/// without a leader with etcd's error, as the gRPC call is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pass_the_interceptors_checks() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let follower = (cluster.index_of(leader) + 1) % 3;
    let url = cluster.client_urls()[follower].clone();
    let read = json!({"key": b64("k"), "serializable": true}).to_string();
    let require_leader = [("Grpc-Metadata-hasleader", "true")];
    let served = send_with(
        &url,
        "POST",
        "/v3/kv/range",
        &require_leader,
        read.as_bytes(),
    )
    .await?;
    ensure!(served.status == 200, "{served:?}");

    info!("--- isolate the follower until it knows no leader");
    cluster
        .faults
        .isolate(cluster.members[follower].id, &cluster.ids());
    let refused = rampart_tests::wait_until("the isolated member to refuse", WAIT, || async {
        let answer = send_with(
            &url,
            "POST",
            "/v3/kv/range",
            &require_leader,
            read.as_bytes(),
        )
        .await?;
        Ok((answer.status != 200).then_some(answer))
    })
    .await?;
    ensure!(refused.status == 503, "{refused:?}");
    ensure!(
        refused.json()?
            == json!({"error": "etcdserver: no leader", "message": "etcdserver: no leader",
                      "code": 14})
    );
    let local = send(&url, "POST", "/v3/kv/range", read.as_bytes()).await?;
    ensure!(
        local.status == 200,
        "without the header, served locally: {local:?}"
    );
    cluster.faults.heal();
    cluster.shutdown().await;
    Ok(())
}

/// `tests/gateway/run`: the Python etcd3gw client's tests and its own functional suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd3gw_against_a_cluster() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    cluster.wait_for_leader(WAIT).await?;
    let url = cluster.client_urls()[1].clone();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway/run");
    info!("--- {} {url}", script.display());
    let output = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(&script).arg(&url).output(),
    )
    .await
    .context("the etcd3gw tests took over 10 minutes")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    info!("etcd3gw tests:\n{stdout}\n{stderr}");
    if !output.status.success() {
        bail!(
            "the etcd3gw tests failed ({}):\n{stdout}\n{stderr}",
            output.status
        );
    }
    // etcd3gw's suite skips its tests when it finds no server: none may be skipped.
    ensure!(
        !stdout.contains("skipped"),
        "some etcd3gw tests were skipped:\n{stdout}"
    );
    cluster.shutdown().await;
    Ok(())
}

/// `value` with what differs between two clusters by nature (ids, terms, the seconds a lease
/// has left) replaced by a mark.
fn comparable(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, field)| {
                    let remaining = name == "TTL" && fields.contains_key("grantedTTL");
                    let masked = remaining
                        || matches!(name.as_str(), "cluster_id" | "member_id" | "raft_term");
                    let field = if masked {
                        json!("<id>")
                    } else {
                        comparable(field)
                    };
                    (name.clone(), field)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(comparable).collect()),
        other => other.clone(),
    }
}

/// The same requests to a real etcd 3.4 and to Rampart get the same answers: statuses, JSON
/// (every field, ids and terms aside), errors, stream lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_as_etcd_3_4_does() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let cluster = TestCluster::start(1).await?;
    cluster.wait_for_leader(WAIT).await?;
    let rampart = &cluster.client_urls()[0];
    let lease = json!({"ID": "4242"});
    let requests = [
        (
            "/v3/kv/put",
            json!({"key": b64("foo"), "value": b64("bar")}),
        ),
        (
            "/v3/kv/put",
            json!({"key": b64("foo"), "value": b64("baz"), "prev_kv": true}),
        ),
        ("/v3/kv/range", json!({"key": b64("foo")})),
        ("/v3/kv/range", json!({"key": b64("none")})),
        (
            "/v3/kv/range",
            json!({"key": b64("a"), "range_end": b64("z"), "count_only": true}),
        ),
        (
            "/v3/kv/range",
            json!({"key": b64("a"), "range_end": b64("z"), "keys_only": true,
                                "sort_order": "DESCEND", "sort_target": "MOD", "limit": 1}),
        ),
        (
            "/v3/kv/txn",
            json!({
            "compare": [{"key": b64("foo"), "result": "EQUAL", "target": "VALUE", "value": b64("baz")},
                        {"key": b64("new"), "target": "CREATE", "create_revision": 0}],
            "success": [{"request_put": {"key": b64("new"), "value": b64("1")}},
                        {"request_range": {"key": b64("foo")}}],
            "failure": []}),
        ),
        (
            "/v3/kv/txn",
            json!({
            "compare": [{"key": b64("new"), "target": "CREATE", "create_revision": 0}],
            "success": [], "failure": [{"request_range": {"key": b64("new")}}]}),
        ),
        ("/v3/kv/put", json!({"value": b64("no key")})),
        (
            "/v3/kv/put",
            json!({"key": b64("k"), "value": b64("v"), "lease": "99"}),
        ),
        ("/v3/lease/grant", json!({"TTL": 60, "ID": lease["ID"]})),
        (
            "/v3/kv/put",
            json!({"key": b64("leased"), "value": b64("v"), "lease": lease["ID"]}),
        ),
        (
            "/v3/kv/lease/timetolive",
            json!({"ID": lease["ID"], "keys": true}),
        ),
        ("/v3/lease/grant", json!({"TTL": 60, "ID": lease["ID"]})),
        ("/v3/lease/revoke", lease.clone()),
        ("/v3/kv/lease/revoke", lease.clone()),
        ("/v3/lease/timetolive", lease.clone()),
        (
            "/v3/kv/deleterange",
            json!({"key": b64("a"), "range_end": b64("z"), "prev_kv": true}),
        ),
        (
            "/v3/kv/deleterange",
            json!({"key": b64("a"), "range_end": b64("z")}),
        ),
        ("/v3/kv/compaction", json!({"revision": 3})),
        ("/v3/kv/range", json!({"key": b64("foo"), "revision": 2})),
        ("/v3/kv/range", json!({"key": b64("foo"), "revision": 100})),
        ("/v3beta/kv/range", json!({"key": b64("foo")})),
        ("/v3/kv/nothing", json!({})),
    ];
    for (path, body) in requests {
        let mut from_etcd =
            etcds_answer(&etcd.url, "POST", path, &[], body.to_string().as_bytes()).await?;
        // Debian's etcd 3.4.23 is built with an older grpc-gateway than etcd's own release
        // (v1.9.5), which answers FailedPrecondition with 412; v1.9.5 (and Rampart) with 400.
        if from_etcd.status == 412 {
            from_etcd.status = 400;
        }
        let from_rampart = post(rampart, path, body.clone()).await?;
        info!(
            "{path} {body}\n  etcd:    {} {}\n  rampart: {} {}",
            from_etcd.status,
            from_etcd.body.trim(),
            from_rampart.status,
            from_rampart.body.trim()
        );
        ensure!(
            from_etcd.status == from_rampart.status,
            "{path} {body}: etcd answered {from_etcd:?}, rampart {from_rampart:?}"
        );
        let (etcd_json, rampart_json) = match (from_etcd.json(), from_rampart.json()) {
            (Ok(etcd_json), Ok(rampart_json)) => {
                (comparable(&etcd_json), comparable(&rampart_json))
            }
            _ => {
                ensure!(
                    from_etcd.body == from_rampart.body,
                    "{path} {body}: {from_etcd:?} {from_rampart:?}"
                );
                continue;
            }
        };
        ensure!(
            etcd_json == rampart_json,
            "{path} {body}:\n  etcd:    {etcd_json}\n  rampart: {rampart_json}"
        );
    }

    info!("--- watches from a compacted revision and from the compaction: the same lines");
    for start in [1, 3] {
        let create = json!({"create_request": {"key": b64("a"), "range_end": b64("z"),
                            "start_revision": start}});
        let (_, mut from_etcd) = Lines::open(&etcd.url, "/v3/watch", &create.to_string()).await?;
        let (_, mut from_rampart) = Lines::open(rampart, "/v3/watch", &create.to_string()).await?;
        for _ in 0..2 {
            let etcd_line = comparable(&from_etcd.next().await?.context("etcd's watch ended")?);
            let mut rampart_line =
                comparable(&from_rampart.next().await?.context("our watch ended")?);
            // A watch canceled for compaction: etcd's response has revision 0 in its header (so
            // none in the JSON), Rampart's the member's current revision.
            if rampart_line["result"]["compact_revision"].is_string() {
                if let Some(header) = rampart_line["result"]["header"].as_object_mut() {
                    header.remove("revision");
                }
            }
            ensure!(
                etcd_line == rampart_line,
                "watch from {start}:\n  etcd:    {etcd_line}\n  rampart: {rampart_line}"
            );
        }
    }
    cluster.shutdown().await;
    Ok(())
}

/// `--cors` as etcd 3.4 has it: the same requests, from the same origins, to etcd and to Rampart
/// started with the same `--cors` get the same statuses and `Access-Control-*` headers: any
/// origin by default, only the listed ones otherwise, on the gateway and the other HTTP
/// endpoints; a preflight `OPTIONS`, to any path, answers 200 with an empty body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_as_etcd_3_4_does() -> anyhow::Result<()> {
    let listed = "http://example.com:8080,https://b.org:443";
    for cors in [None, Some(listed)] {
        let etcd = match cors {
            Some(cors) => Etcd::start_with(&["--cors", cors]).await?,
            None => Etcd::start().await?,
        };
        let cluster = TestCluster::start_with(1, |raw| raw.cors = cors.map(String::from)).await?;
        cluster.wait_for_leader(WAIT).await?;
        let rampart = &cluster.client_urls()[0];
        let requests = [
            ("OPTIONS", "/v3/kv/put", Some("http://example.com:8080")),
            ("OPTIONS", "/v3/kv/put", Some("http://elsewhere.example:1")),
            ("OPTIONS", "/v3/watch", None),
            ("OPTIONS", "/no/such/path", Some("https://b.org:443")),
            ("POST", "/v3/kv/range", Some("https://b.org:443")),
            ("POST", "/v3/kv/range", Some("https://b.org")),
            ("POST", "/v3/kv/range", None),
            ("POST", "/v3/kv/put", Some("http://example.com:8080")),
            ("GET", "/health", Some("http://example.com:8080")),
            ("GET", "/version", Some("http://elsewhere.example:1")),
        ];
        for (method, path, origin) in requests {
            let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
            let body = match path {
                "/v3/kv/put" if method == "POST" => json!({"key": b64("k"), "value": b64("v")}),
                "/v3/kv/range" => json!({"key": b64("k")}),
                _ => Value::Null,
            };
            let body = if body.is_null() {
                String::new()
            } else {
                body.to_string()
            };
            let theirs = etcds_answer(&etcd.url, method, path, &headers, body.as_bytes()).await?;
            let ours = send_with(rampart, method, path, &headers, body.as_bytes()).await?;
            ensure!(
                (ours.status, &ours.access_control) == (theirs.status, &theirs.access_control),
                "{method} {path} from {origin:?}, --cors {cors:?}: Rampart answers {} {:?}, \
                 etcd {} {:?}",
                ours.status,
                ours.access_control,
                theirs.status,
                theirs.access_control
            );
            if method == "OPTIONS" {
                ensure!(
                    ours.body.is_empty(),
                    "{method} {path}: a body {:?}",
                    ours.body
                );
            }
        }
        cluster.shutdown().await;
    }
    Ok(())
}

/// A path no route serves answers as etcd 3.4's HTTP mux does (404, Go's text), not with a gRPC
/// answer, while a gRPC call to an unknown method still gets gRPC's `Unimplemented`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_as_etcd_3_4_does() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let cluster = TestCluster::start(1).await?;
    cluster.wait_for_leader(WAIT).await?;
    let rampart = &cluster.client_urls()[0];
    let requests = [
        ("GET", "/no/such/path", ""),
        ("POST", "/no/such/path", "{}"),
        ("POST", "/v3/kv/nothing", "{}"),
        ("GET", "/v3/kv/range", ""),
    ];
    for (method, path, body) in requests {
        let theirs = etcds_answer(&etcd.url, method, path, &[], body.as_bytes()).await?;
        let ours = send(rampart, method, path, body.as_bytes()).await?;
        ensure!(
            (ours.status, &ours.content_type, &ours.body)
                == (theirs.status, &theirs.content_type, &theirs.body),
            "{method} {path}: Rampart answers {} {:?} {:?}, etcd {} {:?} {:?}",
            ours.status,
            ours.content_type,
            ours.body,
            theirs.status,
            theirs.content_type,
            theirs.body
        );
    }
    // A gRPC call (its content type says so) to a method no service has.
    let address = rampart.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await?;
    let head = format!(
        "POST /no.Such/Method HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/grpc\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    ensure!(
        answer.contains("content-type: application/grpc") && answer.contains("grpc-status: 12"),
        "a gRPC call to an unknown method: {answer}"
    );
    cluster.shutdown().await;
    Ok(())
}

/// `--host-whitelist` as etcd 3.4 has it: the same requests, naming the same hosts, to etcd and
/// to Rampart started with the same list get the same answers (421 and etcd's text for a host
/// not listed, the port and IPv6 brackets left aside as Go's `net.SplitHostPort` does); gRPC
/// calls pass whatever host they name. (etcd's list has 127.0.0.1 too, which the test's wait
/// for it to serve names; Rampart's has not, so that its own requests to 127.0.0.1 show the
/// refusal of HTTP and the passage of gRPC.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_whitelist_as_etcd_3_4_does() -> anyhow::Result<()> {
    let listed = "example.com,::1";
    let etcd = Etcd::start_with(&["--host-whitelist", &format!("{listed},127.0.0.1")]).await?;
    let cluster =
        TestCluster::start_with(1, |raw| raw.host_whitelist = Some(listed.into())).await?;
    cluster.wait_for_leader(WAIT).await?;
    let rampart = &cluster.client_urls()[0];
    let range = json!({"key": b64("k")}).to_string();
    let requests = [
        ("POST", "/v3/kv/range", "example.com:2379", range.as_str()),
        ("POST", "/v3/kv/range", "example.com", range.as_str()),
        ("OPTIONS", "/v3/kv/range", "evil.example:2379", ""),
        ("GET", "/health", "[::1]:2379", ""),
        ("GET", "/version", "::1", ""),
        ("GET", "/metrics", "localhost:2379", ""),
    ];
    for (method, path, host, body) in requests {
        let headers = [("Host", host)];
        let theirs = etcds_answer(&etcd.url, method, path, &headers, body.as_bytes()).await?;
        let ours = send_with(rampart, method, path, &headers, body.as_bytes()).await?;
        let answer = |a: &Answer| {
            let body = if a.status == 421 {
                a.body.clone()
            } else {
                String::new()
            };
            (a.status, a.access_control.clone(), body)
        };
        ensure!(
            answer(&ours) == answer(&theirs),
            "{method} {path} naming host {host:?}: Rampart answers {:?}, etcd {:?}",
            answer(&ours),
            answer(&theirs)
        );
    }
    // Rampart's own address, 127.0.0.1, is not listed: HTTP is refused, gRPC passes.
    let refused = post(rampart, "/v3/kv/range", json!({"key": b64("k")})).await?;
    ensure!(
        refused.status == 421 && refused.body.contains("--host-whitelist \"127.0.0.1\""),
        "a request naming 127.0.0.1: {refused:?}"
    );
    let mut client = cluster.client(0).await?;
    rampart_tests::put(&mut client, "grpc", "passes").await?;
    cluster.shutdown().await;
    Ok(())
}
