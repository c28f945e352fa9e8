//! Compatibility with the real `etcdctl` (3.4, from the Debian package `etcd-client`) against a
//! cluster of three `rampart` processes.
//!
//! etcdctl speaks gRPC over plain HTTP/2 to the client URLs, like any etcd v3 client. The tests
//! give it all three endpoints (its balancer spreads requests over them) and single followers,
//! read its `-w json` output and compare it with what etcd prints. These tests fail, rather than
//! skip, when etcdctl is missing: CI installs it, and a silently skipped compatibility test
//! proves nothing.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use base64::Engine;
use rampart_tests::{wait_until, ProcessCluster};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tracing::info;

use crate::common::{etcdctl_path, owned};

/// How long one etcdctl invocation may take before the test fails.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// How long members may take to agree (leader, revision, published client URLs).
const AGREE_WAIT: Duration = Duration::from_secs(30);

/// What one etcdctl run printed.
pub(crate) struct Run {
    pub(crate) success: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// etcdctl pointed at a fixed list of endpoints.
pub(crate) struct Etcdctl {
    binary: PathBuf,
    endpoints: String,
}

impl Etcdctl {
    pub(crate) fn new(endpoints: &[&str]) -> anyhow::Result<Etcdctl> {
        Ok(Etcdctl {
            binary: etcdctl_path()?,
            endpoints: endpoints.join(","),
        })
    }

    /// Runs `etcdctl <args>` with `stdin` fed to it, and returns what it printed.
    pub(crate) async fn run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Run> {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .arg("--dial-timeout=5s")
            .arg("--command-timeout=30s")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().context("etcdctl has no stdin")?;
            pipe.write_all(input.as_bytes()).await?;
            // Dropping the pipe closes it: etcdctl reads to the end of its input.
        }
        let output = tokio::time::timeout(COMMAND_DEADLINE, child.wait_with_output())
            .await
            .with_context(|| {
                format!("etcdctl {args:?} did not finish within {COMMAND_DEADLINE:?}")
            })??;
        let run = Run {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        Ok(run)
    }

    /// Runs etcdctl, requires success and returns its standard output.
    pub(crate) async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        self.ok_with_input(args, None).await
    }

    async fn ok_with_input(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let run = self.run(args, stdin).await?;
        ensure!(
            run.success,
            "etcdctl {args:?} against {} failed:\nstdout: {}\nstderr: {}",
            self.endpoints,
            run.stdout,
            run.stderr
        );
        Ok(run.stdout)
    }

    /// Runs etcdctl until it succeeds, for up to [`AGREE_WAIT`], while it fails with `refusal`
    /// in its standard error (a refusal that passes, such as "unhealthy cluster" in a cluster
    /// that just started); returns its standard output. Any other failure ends the wait.
    async fn ok_once_past(&self, args: &[&str], refusal: &str) -> anyhow::Result<String> {
        let what = format!("etcdctl {args:?} to get past {refusal:?}");
        wait_until(&what, AGREE_WAIT, || async {
            let run = self.run(args, None).await?;
            if run.success {
                return Ok(Some(run.stdout));
            }
            ensure!(run.stderr.contains(refusal), "{}", run.stderr);
            Ok(None)
        })
        .await
    }

    /// Runs etcdctl with `-w json` and parses what it prints.
    pub(crate) async fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        self.json_with_input(args, None).await
    }

    async fn json_with_input(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-w", "json"]);
        let stdout = self.ok_with_input(&all, stdin).await?;
        serde_json::from_str(&stdout)
            .with_context(|| format!("etcdctl {all:?} printed something other than JSON: {stdout}"))
    }
}

/// Decodes one of etcdctl's base64 JSON byte strings.
fn text(value: &Value) -> anyhow::Result<String> {
    let encoded = value
        .as_str()
        .with_context(|| format!("{value} is not a string"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .with_context(|| format!("{encoded:?} is not base64"))?;
    Ok(String::from_utf8(bytes)?)
}

/// The `(key, value)` pairs of a range response printed by `etcdctl get -w json`. etcd leaves
/// out empty fields, so a response without keys has no `kvs` at all.
fn kvs(response: &Value) -> anyhow::Result<Vec<(String, String)>> {
    let Some(kvs) = response.get("kvs") else {
        return Ok(vec![]);
    };
    kvs.as_array()
        .with_context(|| format!("kvs is not an array: {response}"))?
        .iter()
        .map(|kv| {
            let value = match kv.get("value") {
                Some(v) => text(v)?,
                None => String::new(),
            };
            Ok((text(&kv["key"])?, value))
        })
        .collect()
}

/// A number field that etcd leaves out when it is zero.
fn number(value: &Value, field: &str) -> i64 {
    value.get(field).and_then(Value::as_i64).unwrap_or(0)
}

fn header_revision(response: &Value) -> anyhow::Result<i64> {
    response["header"]["revision"]
        .as_i64()
        .with_context(|| format!("no header revision in {response}"))
}

/// The cluster's client URLs.
fn urls(cluster: &ProcessCluster) -> Vec<String> {
    cluster.client_urls()
}

/// `url` without its `http://`: etcdctl accepts endpoints in both forms.
fn host_port(url: &str) -> &str {
    url.strip_prefix("http://").unwrap_or(url)
}

/// Waits until every endpoint's status names the same non-zero leader, and returns the
/// statuses (one per endpoint, in order) as etcdctl printed them. `endpoint status` dials each
/// endpoint on its own, which sends the endpoint as given (`http://...`) as the HTTP/2
/// `:authority`; see `per_endpoint_commands_accept_http_urls`.
async fn agreed_status(urls: &[String]) -> anyhow::Result<Vec<Value>> {
    let endpoints: Vec<&str> = urls.iter().map(String::as_str).collect();
    let etcdctl = Etcdctl::new(&endpoints)?;
    wait_until(
        "every endpoint to report one leader",
        AGREE_WAIT,
        || async {
            let statuses = etcdctl.json(&["endpoint", "status"]).await?;
            let statuses = statuses
                .as_array()
                .with_context(|| format!("endpoint status is not a list: {statuses}"))?
                .clone();
            ensure!(statuses.len() == 3, "expected 3 statuses: {statuses:?}");
            let leaders: Vec<u64> = statuses
                .iter()
                .map(|s| s["Status"]["leader"].as_u64().unwrap_or(0))
                .collect();
            let agreed = leaders[0] != 0 && leaders.iter().all(|&l| l == leaders[0]);
            Ok(agreed.then_some(statuses))
        },
    )
    .await
}

/// Which member (index) leads, from endpoint statuses in endpoint order.
fn leader_index(statuses: &[Value]) -> anyhow::Result<usize> {
    let leader = statuses[0]["Status"]["leader"].as_u64().unwrap_or(0);
    statuses
        .iter()
        .position(|s| s["Status"]["header"]["member_id"].as_u64() == Some(leader))
        .with_context(|| format!("no endpoint is the leader {leader:x}: {statuses:?}"))
}

/// Three `rampart` processes that agree on a leader, with etcdctl on all their endpoints.
struct ThreeMembers {
    /// Keeps the processes alive for the test.
    _cluster: ProcessCluster,
    urls: Vec<String>,
    leader: usize,
    all: Etcdctl,
}

impl ThreeMembers {
    async fn start() -> anyhow::Result<ThreeMembers> {
        rampart_tests::init_tracing();
        let etcdctl_binary = etcdctl_path()?;
        info!(
            "--- start 3 processes; etcdctl at {}",
            etcdctl_binary.display()
        );
        let cluster = ProcessCluster::start(3).await?;
        let urls = urls(&cluster);
        let leader = leader_index(&agreed_status(&urls).await?)?;
        let all = Etcdctl::new(&[&urls[0], &urls[1], &urls[2]])?;
        Ok(ThreeMembers {
            _cluster: cluster,
            urls,
            leader,
            all,
        })
    }

    /// The member `offset` places after the leader (1 or 2: a follower).
    fn follower(&self, offset: usize) -> usize {
        (self.leader + offset) % 3
    }

    /// etcdctl on that follower's endpoint alone.
    fn on_follower(&self, offset: usize) -> anyhow::Result<Etcdctl> {
        Etcdctl::new(&[&self.urls[self.follower(offset)]])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_del_and_history_reads() -> anyhow::Result<()> {
    let members = ThreeMembers::start().await?;
    let urls = members.urls.clone();
    let all = &members.all;
    let on_follower = members.on_follower(1)?;

    info!("--- put through every endpoint and through a single follower");
    assert_eq!(all.ok(&["put", "fruit/apple", "red"]).await?.trim(), "OK");
    assert_eq!(
        all.ok(&["put", "fruit/banana", "yellow"]).await?.trim(),
        "OK"
    );
    let put = on_follower
        .json(&["put", "fruit/cherry", "dark red"])
        .await?;
    let cherry_revision = header_revision(&put)?;

    info!("--- get one key, simple and json; get by prefix");
    assert_eq!(
        all.ok(&["get", "fruit/apple"]).await?,
        "fruit/apple\nred\n",
        "simple output is the key then the value"
    );
    let got = on_follower.json(&["get", "fruit/cherry"]).await?;
    assert_eq!(kvs(&got)?, owned(&[("fruit/cherry", "dark red")]));
    assert_eq!(number(&got["kvs"][0], "mod_revision"), cherry_revision);
    assert_eq!(number(&got["kvs"][0], "version"), 1);
    assert_eq!(number(&got, "count"), 1);
    let got = all.json(&["get", "fruit/", "--prefix"]).await?;
    assert_eq!(
        kvs(&got)?,
        owned(&[
            ("fruit/apple", "red"),
            ("fruit/banana", "yellow"),
            ("fruit/cherry", "dark red")
        ])
    );
    assert_eq!(number(&got, "count"), 3);
    let got = all
        .json(&["get", "fruit/", "--prefix", "--limit=1"])
        .await?;
    assert_eq!(kvs(&got)?, owned(&[("fruit/apple", "red")]));
    assert_eq!(number(&got, "count"), 3);
    assert_eq!(got.get("more").and_then(Value::as_bool), Some(true));
    assert_eq!(
        all.ok(&["get", "fruit/", "--prefix", "--keys-only"])
            .await?,
        "fruit/apple\n\nfruit/banana\n\nfruit/cherry\n\n"
    );

    info!("--- overwrite a key and read the old value back with --rev");
    on_follower.ok(&["put", "fruit/cherry", "black"]).await?;
    let old = on_follower
        .json(&["get", "fruit/cherry", &format!("--rev={cherry_revision}")])
        .await?;
    assert_eq!(kvs(&old)?, owned(&[("fruit/cherry", "dark red")]));
    let new = all.json(&["get", "fruit/cherry"]).await?;
    assert_eq!(kvs(&new)?, owned(&[("fruit/cherry", "black")]));
    assert_eq!(number(&new["kvs"][0], "version"), 2);

    info!("--- delete by prefix prints the count; the keys are gone everywhere");
    let before = header_revision(&all.json(&["get", "nothing"]).await?)?;
    assert_eq!(
        on_follower.ok(&["del", "fruit/", "--prefix"]).await?.trim(),
        "3"
    );
    for url in &urls {
        let one = Etcdctl::new(&[url])?;
        let got = one.json(&["get", "fruit/", "--prefix"]).await?;
        assert!(kvs(&got)?.is_empty(), "{url} still has fruit: {got}");
        assert_eq!(
            header_revision(&got)?,
            before + 1,
            "{url}: one revision for the delete"
        );
    }
    let deleted = all.json(&["del", "fruit/", "--prefix"]).await?;
    assert_eq!(number(&deleted, "deleted"), 0, "nothing is left to delete");
    assert_eq!(header_revision(&deleted)?, before + 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_from_standard_input() -> anyhow::Result<()> {
    let members = ThreeMembers::start().await?;
    let all = &members.all;
    let on_follower = members.on_follower(2)?;

    all.ok(&["put", "account", "10"]).await?;

    info!("--- the compare holds: the success requests run");
    // etcdctl's non-interactive txn format: compares, a blank line, success requests, a blank
    // line, failure requests, a blank line.
    let input = "value(\"account\") = \"10\"\n\nput account 20\nput audit \"moved 10\"\nget account\n\nget account\n\n";
    let response = on_follower.json_with_input(&["txn"], Some(input)).await?;
    assert_eq!(
        response.get("succeeded").and_then(Value::as_bool),
        Some(true),
        "{response}"
    );
    let responses = response["responses"]
        .as_array()
        .with_context(|| format!("no responses: {response}"))?;
    assert_eq!(responses.len(), 3, "{response}");
    assert!(
        responses[0]["Response"].get("ResponsePut").is_some(),
        "{response}"
    );
    assert!(
        responses[1]["Response"].get("ResponsePut").is_some(),
        "{response}"
    );
    let range = &responses[2]["Response"]["ResponseRange"];
    assert_eq!(
        kvs(range)?,
        owned(&[("account", "20")]),
        "the txn reads its own write"
    );
    let txn_revision = header_revision(&response)?;
    assert_eq!(
        number(&range["kvs"][0], "mod_revision"),
        txn_revision,
        "the txn's writes carry its revision"
    );

    info!("--- the compare fails: the failure requests run, in simple output");
    let input = "value(\"account\") = \"10\"\n\nput account 30\n\nget account\nput refused yes\n\n";
    let stdout = all.ok_with_input(&["txn"], Some(input)).await?;
    assert_eq!(
        stdout, "FAILURE\n\naccount\n20\n\nOK\n",
        "etcdctl's simple txn output"
    );
    let account = all.json(&["get", "account"]).await?;
    assert_eq!(kvs(&account)?, owned(&[("account", "20")]));
    let refused = all.json(&["get", "refused"]).await?;
    assert_eq!(kvs(&refused)?, owned(&[("refused", "yes")]));

    info!("--- version, create and mod compares, and del inside a txn");
    let input = format!(
        "version(\"account\") = \"2\"\nmod(\"account\") = \"{txn_revision}\"\ncreate(\"audit\") = \"{txn_revision}\"\n\ndel audit\n\n\n"
    );
    let response = on_follower.json_with_input(&["txn"], Some(&input)).await?;
    assert_eq!(
        response.get("succeeded").and_then(Value::as_bool),
        Some(true),
        "{response}"
    );
    let audit = all.json(&["get", "audit"]).await?;
    assert!(kvs(&audit)?.is_empty(), "audit was deleted: {audit}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_reading_a_compacted_revision() -> anyhow::Result<()> {
    let members = ThreeMembers::start().await?;
    let urls = members.urls.clone();
    let all = &members.all;
    let follower = members.follower(1);

    info!("--- three versions of one key");
    let mut revisions = Vec::new();
    for value in ["v1", "v2", "v3"] {
        revisions.push(header_revision(&all.json(&["put", "k", value]).await?)?);
    }

    info!("--- compact at the second version through a follower");
    let on_follower = Etcdctl::new(&[&urls[follower]])?;
    let stdout = on_follower
        .ok(&["compaction", &revisions[1].to_string()])
        .await?;
    assert_eq!(
        stdout.trim(),
        format!("compacted revision {}", revisions[1])
    );

    info!("--- every endpoint refuses the compacted revision and serves the later ones");
    for url in &urls {
        let one = Etcdctl::new(&[url])?;
        let run = one
            .run(&["get", "k", &format!("--rev={}", revisions[0])], None)
            .await?;
        ensure!(
            !run.success,
            "{url}: reading compacted revision {} succeeded: {}",
            revisions[0],
            run.stdout
        );
        ensure!(
            run.stderr
                .contains("Error: etcdserver: mvcc: required revision has been compacted"),
            "{url}: expected etcd's compacted error, got:\n{}",
            run.stderr
        );
        let got = one
            .json(&["get", "k", &format!("--rev={}", revisions[1])])
            .await?;
        assert_eq!(kvs(&got)?, owned(&[("k", "v2")]), "{url}");
    }

    info!("--- a future revision is refused with etcd's message");
    let run = all
        .run(
            &["get", "k", &format!("--rev={}", revisions[2] + 1000)],
            None,
        )
        .await?;
    if run.success
        || !run
            .stderr
            .contains("etcdserver: mvcc: required revision is a future revision")
    {
        bail!(
            "expected the future revision error, got success={} stdout={} stderr={}",
            run.success,
            run.stdout,
            run.stderr
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_status_health_and_member_list() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    etcdctl_path()?;
    let cluster = ProcessCluster::start(3).await?;
    let urls = urls(&cluster);
    let all = Etcdctl::new(&[&urls[0], &urls[1], &urls[2]])?;

    info!("--- member list: three members named p0..p2, with their published URLs");
    let members = wait_until(
        "every member's client URLs to be listed",
        AGREE_WAIT,
        || async {
            let list = all.json(&["member", "list"]).await?;
            let members = list["members"]
                .as_array()
                .with_context(|| format!("no members: {list}"))?
                .clone();
            let published = members.len() == 3
                && members.iter().all(|m| {
                    m.get("clientURLs")
                        .and_then(Value::as_array)
                        .is_some_and(|urls| !urls.is_empty())
                });
            Ok(published.then_some(members))
        },
    )
    .await?;
    let mut listed: Vec<(String, String, String)> = members
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_string(),
                m["peerURLs"][0].as_str().unwrap_or_default().to_string(),
                m["clientURLs"][0].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    listed.sort();
    let expected: Vec<(String, String, String)> = cluster
        .members
        .iter()
        .map(|m| (m.name.clone(), m.peer_url.clone(), m.client_url.clone()))
        .collect();
    assert_eq!(listed, expected);
    let ids: Vec<u64> = members.iter().filter_map(|m| m["ID"].as_u64()).collect();
    assert_eq!(ids.len(), 3, "every member has a numeric ID: {members:?}");

    info!("--- endpoint status: one line per endpoint, one leader among the members");
    all.ok(&["put", "status-key", "1"]).await?;
    let statuses = agreed_status(&urls).await?;
    for (status, url) in statuses.iter().zip(&urls) {
        assert_eq!(status["Endpoint"].as_str(), Some(url.as_str()), "{status}");
        let member_id = status["Status"]["header"]["member_id"]
            .as_u64()
            .unwrap_or(0);
        assert!(
            ids.contains(&member_id),
            "{url} answers as unknown member {member_id:x}"
        );
        assert!(number(&status["Status"], "raftTerm") > 0, "{status}");
        assert!(number(&status["Status"], "raftIndex") > 0, "{status}");
    }
    let leader = statuses[0]["Status"]["leader"].as_u64().unwrap_or(0);
    assert!(
        ids.contains(&leader),
        "the leader {leader:x} is not a member"
    );
    let mut answering: Vec<u64> = statuses
        .iter()
        .filter_map(|s| s["Status"]["header"]["member_id"].as_u64())
        .collect();
    answering.sort_unstable();
    answering.dedup();
    assert_eq!(answering.len(), 3, "each endpoint is a different member");

    info!("--- every endpoint reaches the same revision");
    let by_host_port = Etcdctl::new(&[
        host_port(&urls[0]),
        host_port(&urls[1]),
        host_port(&urls[2]),
    ])?;
    wait_until(
        "every endpoint to report one revision",
        AGREE_WAIT,
        || async {
            let statuses = by_host_port.json(&["endpoint", "status"]).await?;
            let revisions: Vec<i64> = statuses
                .as_array()
                .context("endpoint status is not a list")?
                .iter()
                .map(|s| number(&s["Status"]["header"], "revision"))
                .collect();
            Ok((revisions.len() == 3
                && revisions[0] >= 2
                && revisions.iter().all(|&r| r == revisions[0]))
            .then_some(()))
        },
    )
    .await?;

    info!("--- endpoint health: every endpoint is healthy");
    // etcdctl prints its simple health report on standard error.
    let run = all.run(&["endpoint", "health"], None).await?;
    ensure!(run.success, "endpoint health failed: {}", run.stderr);
    for url in &urls {
        ensure!(
            run.stderr.contains(&format!("{url} is healthy")),
            "{url} is not reported healthy:\n{}",
            run.stderr
        );
    }
    let health = all.json(&["endpoint", "health"]).await?;
    let health = health.as_array().context("endpoint health is not a list")?;
    assert_eq!(health.len(), 3);
    assert!(
        health.iter().all(|h| h["health"].as_bool() == Some(true)),
        "{health:?}"
    );
    Ok(())
}

/// etcdctl 3.4 dials each endpoint of `endpoint status` and `defrag` on its own, through
/// grpc-go's passthrough resolver, and so sends `http://host:port` as the HTTP/2 `:authority`.
/// etcd's Go server accepts that; the h2 server under tonic resets such a stream with
/// PROTOCOL_ERROR (hyperium/h2#525) unless Rampart repairs the authority first
/// (`crates/rampart-h2-compat`). Both endpoint forms must work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_endpoint_commands_accept_http_urls() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    etcdctl_path()?;
    let cluster = ProcessCluster::start(1).await?;
    let url = cluster.members[0].client_url.clone();
    for endpoint in [url.as_str(), host_port(&url)] {
        info!("--- endpoint status and defrag with --endpoints={endpoint}");
        let etcdctl = Etcdctl::new(&[endpoint])?;
        let statuses = etcdctl.json(&["endpoint", "status"]).await?;
        let leader = statuses[0]["Status"]["leader"].as_u64().unwrap_or(0);
        ensure!(leader != 0, "no leader in {statuses}");
        let run = etcdctl.run(&["defrag"], None).await?;
        ensure!(
            run.success && run.stdout.contains("Finished defragmenting etcd member"),
            "etcdctl defrag --endpoints={endpoint} failed:\nstdout: {}\nstderr: {}",
            run.stdout,
            run.stderr
        );
    }
    Ok(())
}

/// etcdctl's lease commands: grant, put --lease, timetolive --keys, keep-alive --once, list and
/// revoke, through every endpoint and through a single follower. etcdctl prints lease ids as
/// 16 hex digits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_commands() -> anyhow::Result<()> {
    let members = ThreeMembers::start().await?;
    let urls = members.urls.clone();
    let all = &members.all;
    let on_follower = members.on_follower(1)?;

    info!("--- lease grant prints the new lease's id and TTL");
    let granted = on_follower.ok(&["lease", "grant", "10"]).await?;
    let id = granted
        .trim()
        .strip_prefix("lease ")
        .and_then(|rest| rest.strip_suffix(" granted with TTL(10s)"))
        .with_context(|| format!("unexpected lease grant output: {granted:?}"))?
        .to_string();
    ensure!(
        id.len() == 16 && i64::from_str_radix(&id, 16).is_ok_and(|id| id > 0),
        "lease id {id:?} is not 16 hex digits of a positive id"
    );

    info!("--- put --lease attaches keys; lease timetolive --keys lists them");
    assert_eq!(
        all.ok(&["put", "--lease", &id, "session/a", "1"])
            .await?
            .trim(),
        "OK"
    );
    on_follower
        .ok(&["put", &format!("--lease={id}"), "session/b", "2"])
        .await?;
    let ttl = on_follower
        .ok(&["lease", "timetolive", &id, "--keys"])
        .await?;
    let prefix = format!("lease {id} granted with TTL(10s), remaining(");
    ensure!(
        ttl.starts_with(&prefix)
            && ttl
                .trim_end()
                .ends_with("s), attached keys([session/a session/b])"),
        "unexpected lease timetolive output: {ttl:?}"
    );

    info!("--- lease keep-alive --once renews it to its full TTL; lease list shows it");
    assert_eq!(
        on_follower
            .ok(&["lease", "keep-alive", "--once", &id])
            .await?
            .trim(),
        format!("lease {id} keepalived with TTL(10)")
    );
    assert_eq!(
        all.ok(&["lease", "list"]).await?,
        format!("found 1 leases\n{id}\n")
    );

    info!("--- lease revoke deletes its keys on every member; the lease is gone");
    assert_eq!(
        on_follower.ok(&["lease", "revoke", &id]).await?.trim(),
        format!("lease {id} revoked")
    );
    for url in &urls {
        let got = Etcdctl::new(&[url])?
            .json(&["get", "session/", "--prefix"])
            .await?;
        assert!(kvs(&got)?.is_empty(), "{url} still has the keys: {got}");
    }
    assert_eq!(
        all.ok(&["lease", "timetolive", &id]).await?.trim(),
        format!("lease {id} already expired")
    );
    assert_eq!(all.ok(&["lease", "list"]).await?, "found 0 leases\n");
    let revoke: &[&str] = &["lease", "revoke", &id];
    let keep_alive: &[&str] = &["lease", "keep-alive", "--once", &id];
    for args in [revoke, keep_alive] {
        let run = all.run(args, None).await?;
        ensure!(
            !run.success && run.stderr.contains("requested lease not found"),
            "etcdctl {args:?} of a revoked lease: expected etcd's \"requested lease not found\", \
             got:\nstdout: {}\nstderr: {}",
            run.stdout,
            run.stderr
        );
    }
    Ok(())
}

/// The value of `NAME="value"` in what `etcdctl member add` printed.
fn printed_env(stdout: &str, name: &str) -> anyhow::Result<String> {
    let prefix = format!("{name}=\"");
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.strip_suffix('"'))
        .map(str::to_string)
        .with_context(|| format!("no {name} in {stdout:?}"))
}

/// A member's id in etcdctl's hex, from `member list -w json`, by name.
async fn member_hex(etcdctl: &Etcdctl, name: &str) -> anyhow::Result<Option<String>> {
    let list = etcdctl.json(&["member", "list"]).await?;
    Ok(list["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"].as_str() == Some(name))
        .and_then(|m| m["ID"].as_u64())
        .map(|id| format!("{id:x}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_add_learner_promote_move_leader_update_and_remove() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    etcdctl_path()?;
    let mut cluster = ProcessCluster::start(3).await?;
    let urls = urls(&cluster);
    let all = Etcdctl::new(&[&urls[0], &urls[1], &urls[2]])?;
    all.ok(&["put", "before", "v"]).await?;

    info!("--- member add --learner prints how to start the new member");
    let new_urls = (rampart_launcher::free_url()?, rampart_launcher::free_url()?);
    let peer_flag = format!("--peer-urls={}", new_urls.1);
    let added = all
        .ok(&["member", "add", "p3", &peer_flag, "--learner"])
        .await?;
    ensure!(added.contains("added to cluster"), "{added}");
    ensure!(printed_env(&added, "ETCD_NAME")? == "p3", "{added}");
    ensure!(
        printed_env(&added, "ETCD_INITIAL_CLUSTER_STATE")? == "existing",
        "{added}"
    );
    let initial_cluster = printed_env(&added, "ETCD_INITIAL_CLUSTER")?;
    ensure!(
        initial_cluster.contains(&format!("p3={}", new_urls.1)) && initial_cluster.contains("p0="),
        "{initial_cluster}"
    );
    let new_client_url = new_urls.0.clone();
    let new = cluster
        .start_joining("p3", new_urls, &initial_cluster)
        .await?;

    info!("--- member list -w table shows the learner, named once it started");
    let table = wait_until("the learner to be listed by name", AGREE_WAIT, || async {
        let table = all.ok(&["member", "list", "-w", "table"]).await?;
        Ok(table
            .lines()
            .any(|line| line.contains(" p3 |") && line.contains(" true |"))
            .then_some(table))
    })
    .await?;
    ensure!(table.contains("IS LEARNER"), "{table}");
    let learner = member_hex(&all, "p3").await?.context("p3 not listed")?;
    let learner_alone = Etcdctl::new(&[&new_client_url])?;
    let refused = learner_alone.run(&["put", "x", "y"], None).await?;
    ensure!(
        !refused.success && refused.stderr.contains("rpc not supported for learner"),
        "a learner took a put: {} {}",
        refused.stdout,
        refused.stderr
    );
    let read = learner_alone
        .ok(&["get", "before", "--consistency=s", "--print-value-only"])
        .await?;
    ensure!(read.trim() == "v", "{read}");

    info!("--- member promote, once it is in sync");
    let promoted = all
        .ok_once_past(&["member", "promote", &learner], "in sync with leader")
        .await?;
    ensure!(promoted.contains("promoted in cluster"), "{promoted}");

    info!("--- move-leader to the new voter");
    let four = Etcdctl::new(&[&urls[0], &urls[1], &urls[2], &new_client_url])?;
    let moved = four.ok(&["move-leader", &learner]).await?;
    ensure!(
        moved.contains("Leadership transferred") && moved.contains(&learner),
        "{moved}"
    );
    let status = four.json(&["endpoint", "status"]).await?;
    let leaders: Vec<u64> = status
        .as_array()
        .context("endpoint status is no array")?
        .iter()
        .filter_map(|s| s["Status"]["leader"].as_u64())
        .collect();
    ensure!(
        leaders.iter().all(|l| format!("{l:x}") == learner),
        "{status}"
    );

    info!("--- member update keeps a member's URL list as given");
    let p1 = member_hex(&all, "p1").await?.context("p1 not listed")?;
    let p1_peer = format!("--peer-urls={}", cluster.members[1].peer_url);
    let updated = all.ok(&["member", "update", &p1, &p1_peer]).await?;
    ensure!(updated.contains("updated in cluster"), "{updated}");

    info!("--- member remove of the leader: it stops, the others carry on");
    // The new leader started moments ago: it removes a voter only once it has reached every
    // other for etcd's health interval.
    let removed = all
        .ok_once_past(&["member", "remove", &learner], "unhealthy cluster")
        .await?;
    ensure!(removed.contains("removed from cluster"), "{removed}");
    let deadline = tokio::time::Instant::now() + AGREE_WAIT;
    while cluster.members[new].exited().is_none() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the removed member still runs after {AGREE_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        cluster.members[new]
            .log()
            .contains("removed from the cluster"),
        "the removed member's log does not say why it stopped"
    );
    all.ok(&["put", "after", "v"]).await?;
    let list = all.json(&["member", "list"]).await?;
    ensure!(
        list["members"].as_array().map(Vec::len) == Some(3),
        "{list}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_member_whose_data_directory_is_lost() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    etcdctl_path()?;
    let mut cluster = ProcessCluster::start(3).await?;
    let urls = urls(&cluster);
    let all = Etcdctl::new(&[&urls[0], &urls[1], &urls[2]])?;
    for i in 0..50 {
        all.ok(&["put", &format!("k{i:02}"), "v"]).await?;
    }

    info!("--- p2's disk dies: killed, its data directory gone");
    let lost = member_hex(&all, "p2").await?.context("p2 not listed")?;
    cluster.kill(2)?;
    std::fs::remove_dir_all(&cluster.members[2].data_dir)?;
    let survivors = Etcdctl::new(&[&urls[0], &urls[1]])?;

    info!("--- remove it, add the replacement as a learner, start it empty, promote it");
    // Until the leader has seen the member go down it counts as running, and a running member
    // is removed only from a cluster healthy for 5 s: this one started moments ago.
    let removed = survivors
        .ok_once_past(&["member", "remove", &lost], "unhealthy cluster")
        .await?;
    ensure!(removed.contains("removed from cluster"), "{removed}");
    survivors.ok(&["put", "during-replacement", "v"]).await?;
    let new_urls = (rampart_launcher::free_url()?, rampart_launcher::free_url()?);
    let peer_flag = format!("--peer-urls={}", new_urls.1);
    let added = survivors
        .ok(&["member", "add", "p2b", &peer_flag, "--learner"])
        .await?;
    let initial_cluster = printed_env(&added, "ETCD_INITIAL_CLUSTER")?;
    let new_client_url = new_urls.0.clone();
    cluster
        .start_joining("p2b", new_urls, &initial_cluster)
        .await?;
    let replacement = added
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no member id in {added:?}"))?
        .to_string();
    ensure!(
        replacement != lost,
        "the replacement reused the lost member's id"
    );
    survivors
        .ok_once_past(&["member", "promote", &replacement], "in sync with leader")
        .await?;

    info!("--- three voters again, the replacement holding every key");
    let replaced = Etcdctl::new(&[&urls[0], &urls[1], &new_client_url])?;
    let list = replaced.json(&["member", "list"]).await?;
    let members = list["members"].as_array().context("no members")?;
    ensure!(members.len() == 3, "{list}");
    ensure!(
        members.iter().all(|m| m.get("isLearner").is_none()),
        "{list}"
    );
    let alone = Etcdctl::new(&[&new_client_url])?;
    let keys = alone
        .ok(&["get", "k", "--prefix", "--keys-only", "--consistency=s"])
        .await?;
    ensure!(
        keys.lines().filter(|l| !l.is_empty()).count() == 50,
        "{keys}"
    );
    replaced.ok(&["put", "after-replacement", "v"]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_hashkv_is_equal_on_every_member() -> anyhow::Result<()> {
    let three = ThreeMembers::start().await?;
    for i in 0..14 {
        three
            .all
            .ok(&["put", &format!("h{}", i % 5), &format!("v{i}")])
            .await?;
    }
    three.all.ok(&["del", "h3"]).await?;
    let status = three.all.json(&["endpoint", "status"]).await?;
    let revision = status[0]["Status"]["header"]["revision"]
        .as_i64()
        .context("no revision")?;
    three
        .all
        .ok(&["compaction", &(revision - 6).to_string()])
        .await?;
    three.all.ok(&["put", "after-compaction", "v"]).await?;

    info!("--- every member hashes the same keys alike once it has applied them");
    let hashes = wait_until("the members' hashes to agree", AGREE_WAIT, || async {
        let out = three.all.json(&["endpoint", "hashkv", "--cluster"]).await?;
        let hashes: Vec<(u64, i64)> = out
            .as_array()
            .context("hashkv printed no array")?
            .iter()
            .map(|e| {
                (
                    e["HashKV"]["hash"].as_u64().unwrap_or(0),
                    e["HashKV"]["compact_revision"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        let agreed =
            hashes.len() == 3 && hashes.iter().all(|h| *h == hashes[0]) && hashes[0].0 != 0;
        Ok(agreed.then_some(hashes))
    })
    .await?;
    ensure!(hashes[0].1 == revision - 6, "{hashes:?}");

    info!("--- a hash at a compacted revision is refused as etcd refuses it");
    let refused = three
        .all
        .run(
            &["endpoint", "hashkv", "--rev", &(revision - 8).to_string()],
            None,
        )
        .await?;
    ensure!(
        !refused.success
            && refused
                .stderr
                .contains("required revision has been compacted"),
        "{} {}",
        refused.stdout,
        refused.stderr
    );
    Ok(())
}
