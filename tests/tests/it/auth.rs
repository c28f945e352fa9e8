//! Authentication through the real `etcdctl` 3.4 against `rampart` processes: every `user`,
//! `role` and `auth` command and the permission checks, compared line for line with what a
//! real etcd 3.4 prints for the same commands; the auth store replicated to followers and kept
//! across a restart; the JSON gateway's `auth/` paths with a token in `Authorization`; JSON
//! Web Tokens checked by every member and made stale by a change of the auth store.

use std::time::Duration;

use anyhow::{ensure, Context};
use base64::Engine;
use rampart_tests::{wait_until, ProcessCluster};
use tracing::info;

use crate::common::Etcd;
use crate::etcdctl::{Etcdctl, Run};
use crate::gateway::send_with;

/// bcrypt's lowest cost: the tests authenticate often, on a machine that runs many at once,
/// and the cost changes nothing of what they check.
const CHEAP_HASHES: &[&str] = &["--bcrypt-cost=4"];

/// One etcdctl command of a script: its arguments and what it reads from its standard input.
type Step = (&'static [&'static str], Option<&'static str>);

/// The commands both servers get, in order: the users and roles set up (with etcd's refusals
/// on the way), authentication turned on, a permission matrix for a reader (single key, prefix,
/// range; reads, writes, txns, watches), the admin calls refused to a non-root user, root's
/// own protections, revoked permissions and a changed password taking effect, and everything
/// torn down again.
const SCRIPT: &[Step] = &[
    (&["user", "add", "root:rootpw"], None),
    (&["user", "add", "root:x"], None),
    (&["user", "add", ":x"], None),
    (&["role", "add", "root"], None),
    (&["role", "add", ""], None),
    (&["user", "grant-role", "root", "root"], None),
    (&["user", "grant-role", "root", "root"], None),
    (&["user", "grant-role", "root", "nope"], None),
    (&["user", "add", "bob", "--no-password"], None),
    (&["user", "add", "carol:"], None),
    (
        &["user", "passwd", "nobody", "--interactive=false"],
        Some("x\n"),
    ),
    (&["user", "add", "alice:apw"], None),
    (&["role", "add", "reader"], None),
    (&["role", "add", "reader"], None),
    (&["role", "grant-permission", "reader", "read", "foo"], None),
    (
        &[
            "role",
            "grant-permission",
            "reader",
            "--prefix=true",
            "readwrite",
            "dir/",
        ],
        None,
    ),
    (
        &["role", "grant-permission", "reader", "write", "w1", "w3"],
        None,
    ),
    (&["role", "grant-permission", "nope", "read", "foo"], None),
    (&["role", "grant-permission", "reader", "readwrite"], None),
    (
        &["role", "grant-permission", "reader", "badtype", "k"],
        None,
    ),
    (&["role", "grant-permission", "reader", "read", "k"], None),
    (&["role", "grant-permission", "reader", "write", "k"], None),
    (
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "a",
            "--from-key",
        ],
        None,
    ),
    (&["role", "get", "reader"], None),
    (
        &["role", "revoke-permission", "reader", "a", "--from-key"],
        None,
    ),
    (&["role", "revoke-permission", "reader", "k"], None),
    (&["role", "get", "reader"], None),
    (&["role", "get", "nope"], None),
    (&["user", "grant-role", "alice", "reader"], None),
    (&["user", "get", "alice"], None),
    (&["user", "get", "nope"], None),
    (&["user", "list"], None),
    (&["role", "list"], None),
    (&["put", "foo", "bar"], None),
    (&["auth", "enable"], None),
    (&["auth", "enable"], None),
    (&["put", "foo", "bar2"], None),
    (&["--user", "bob:x", "get", "foo"], None),
    (&["--user", "carol:", "get", "foo"], None),
    (&["--user", "carol:", "defrag"], None),
    (&["--user", "root:rootpw", "defrag"], None),
    (&["--user", "carol:", "alarm", "list"], None),
    (&["--user", "root:rootpw", "user", "delete", "bob"], None),
    (&["--user", "root:rootpw", "user", "delete", "carol"], None),
    (&["get", "foo"], None),
    (&["--user", "root:rootpw", "put", "foo", "bar"], None),
    (&["--user", "root:wrong", "get", "foo"], None),
    (&["--user", "nobody:x", "get", "foo"], None),
    (&["--user", "alice:apw", "get", "foo"], None),
    (&["--user", "alice:apw", "put", "foo", "x"], None),
    (&["--user", "alice:apw", "put", "dir/a", "1"], None),
    (&["--user", "alice:apw", "get", "dir/", "--prefix"], None),
    (&["--user", "alice:apw", "get", "d", "--prefix"], None),
    (&["--user", "alice:apw", "put", "w2", "x"], None),
    (&["--user", "alice:apw", "get", "w2"], None),
    (&["--user", "alice:apw", "del", "w1"], None),
    (&["--user", "alice:apw", "del", "w1", "--prev-kv"], None),
    (
        &["--user", "alice:apw", "txn"],
        Some("value(\"foo\") = \"bar\"\n\nput dir/t 1\n\n"),
    ),
    (
        &["--user", "alice:apw", "txn"],
        Some("value(\"foo\") = \"bar\"\n\nput foo 1\n\n"),
    ),
    (&["--user", "alice:apw", "watch", "w1", "w3"], None),
    (&["--user", "alice:apw", "user", "list"], None),
    (&["--user", "alice:apw", "role", "list"], None),
    (&["--user", "alice:apw", "user", "get", "alice"], None),
    (&["--user", "alice:apw", "user", "get", "root"], None),
    (&["--user", "alice:apw", "role", "get", "reader"], None),
    (&["--user", "alice:apw", "role", "get", "root"], None),
    (&["--user", "alice:apw", "user", "add", "eve:x"], None),
    (&["--user", "alice:apw", "auth", "disable"], None),
    (
        &[
            "--user",
            "root:rootpw",
            "user",
            "revoke-role",
            "root",
            "root",
        ],
        None,
    ),
    (&["--user", "root:rootpw", "user", "delete", "root"], None),
    (&["--user", "root:rootpw", "role", "delete", "root"], None),
    (
        &[
            "--user",
            "root:rootpw",
            "user",
            "revoke-role",
            "alice",
            "nope",
        ],
        None,
    ),
    (
        &[
            "--user",
            "root:rootpw",
            "role",
            "revoke-permission",
            "reader",
            "nope",
        ],
        None,
    ),
    // Revoked: the next read and the next write are refused.
    (
        &[
            "--user",
            "root:rootpw",
            "role",
            "revoke-permission",
            "reader",
            "foo",
        ],
        None,
    ),
    (&["--user", "alice:apw", "get", "foo"], None),
    (
        &[
            "--user",
            "root:rootpw",
            "role",
            "revoke-permission",
            "reader",
            "dir/",
            "dir0",
        ],
        None,
    ),
    (&["--user", "alice:apw", "put", "dir/b", "1"], None),
    (&["--user", "root:rootpw", "role", "get", "reader"], None),
    // A changed password: the old one no longer authenticates.
    (
        &[
            "--user",
            "root:rootpw",
            "user",
            "passwd",
            "alice",
            "--interactive=false",
        ],
        Some("newpw\n"),
    ),
    (&["--user", "alice:apw", "put", "w1", "y"], None),
    (&["--user", "alice:newpw", "put", "w1", "y"], None),
    (&["--user", "root:rootpw", "user", "delete", "alice"], None),
    (&["--user", "root:rootpw", "user", "list"], None),
    (&["--user", "root:rootpw", "role", "delete", "reader"], None),
    (&["--user", "root:rootpw", "role", "list"], None),
    (&["--user", "root:rootpw", "auth", "disable"], None),
    (&["auth", "disable"], None),
    (&["get", "foo"], None),
    (&["user", "delete", "root"], None),
    (&["role", "delete", "root"], None),
    (&["auth", "enable"], None),
];

/// `run` against `url` with what differs between two servers by nature (etcdctl's log
/// timestamps, its client ids, the endpoint in its retry warnings, the server's URL) removed.
fn comparable(run: &Run, url: &str) -> String {
    let stderr: Vec<String> = run
        .stderr
        .replace(url, "<url>")
        .lines()
        .map(|line| {
            let mut line = line.to_string();
            for (start, end) in [("\"ts\":\"", '"'), ("endpoint://", '"')] {
                if let Some(at) = line.find(start) {
                    let from = at + start.len();
                    if let Some(len) = line[from..].find(end) {
                        line.replace_range(from..from + len, "");
                    }
                }
            }
            line
        })
        .collect();
    format!(
        "success: {}\nstdout:\n{}stderr:\n{}",
        run.success,
        run.stdout.replace(url, "<url>"),
        stderr.join("\n")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_user_role_and_auth_commands_print_what_etcd_prints() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let etcd = Etcd::start().await?;
    let cluster = ProcessCluster::start_with_args(1, CHEAP_HASHES).await?;
    let rampart_url = cluster.client_urls()[0].clone();
    let on_etcd = Etcdctl::new(&[&etcd.url])?;
    let on_rampart = Etcdctl::new(&[&rampart_url])?;
    let mut differences = Vec::new();
    for (args, stdin) in SCRIPT {
        let expected = comparable(&on_etcd.run(args, *stdin).await?, &etcd.url);
        let got = comparable(&on_rampart.run(args, *stdin).await?, &rampart_url);
        info!("etcdctl {args:?}:\n{got}");
        if expected != got {
            differences.push(format!(
                "etcdctl {args:?}\n--- etcd 3.4:\n{expected}\n--- rampart:\n{got}"
            ));
        }
    }
    ensure!(
        differences.is_empty(),
        "{} of {} commands differ:\n{}",
        differences.len(),
        SCRIPT.len(),
        differences.join("\n\n")
    );
    Ok(())
}

/// The permissions of a reader, set up through `etcdctl` (on `admin`): user `root` with the
/// root role, role `reader` with read access to `k` and read-write access to the prefix `dir/`,
/// user `bob` holding it; then authentication on.
async fn set_up_reader(admin: &Etcdctl) -> anyhow::Result<()> {
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "k"],
        &[
            "role",
            "grant-permission",
            "reader",
            "--prefix",
            "readwrite",
            "dir/",
        ],
        &["user", "add", "bob:bobpw"],
        &["user", "grant-role", "bob", "reader"],
        &["put", "k", "v"],
        &["auth", "enable"],
    ] {
        admin.ok(args).await?;
    }
    Ok(())
}

/// Runs etcdctl and returns its standard error, which must say it failed.
async fn refused(etcdctl: &Etcdctl, args: &[&str]) -> anyhow::Result<String> {
    let run = etcdctl.run(args, None).await?;
    ensure!(!run.success, "etcdctl {args:?} succeeded: {}", run.stdout);
    Ok(run.stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_auth_store_reaches_followers_and_survives_a_restart() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let mut cluster = ProcessCluster::start_with_args(3, CHEAP_HASHES).await?;
    let urls = cluster.client_urls();
    let on = |i: usize| Etcdctl::new(&[&urls[i]]);
    let leader = cluster.leader_index(&[0, 1, 2]).await?;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    set_up_reader(&on(leader)?).await?;

    // On a follower: its own token, the reader's permissions, root's.
    let at_follower = on(follower)?;
    let read = at_follower.ok(&["--user", "bob:bobpw", "get", "k"]).await?;
    ensure!(read == "k\nv\n", "bob read {read:?}");
    let stderr = refused(&at_follower, &["--user", "bob:bobpw", "put", "k", "x"]).await?;
    ensure!(stderr.contains("etcdserver: permission denied"), "{stderr}");
    at_follower
        .ok(&["--user", "bob:bobpw", "put", "dir/a", "1"])
        .await?;
    at_follower
        .ok(&["--user", "root:rootpw", "put", "k", "root"])
        .await?;
    let stderr = refused(&at_follower, &["get", "k"]).await?;
    ensure!(
        stderr.contains("etcdserver: user name is empty"),
        "{stderr}"
    );

    // A token is good on every member: etcdctl's balancer sends its calls to all three, with
    // the token one of them issued, and none is refused.
    let everywhere = Etcdctl::new(&urls.iter().map(String::as_str).collect::<Vec<_>>())?;
    for _ in 0..3 {
        let run = everywhere
            .run(&["--user", "bob:bobpw", "get", "k"], None)
            .await?;
        ensure!(
            run.success && !run.stderr.contains("invalid auth token"),
            "bob through every member: {} {}",
            run.stdout,
            run.stderr
        );
    }

    // A member restarted holds the same store: authentication on, bob a reader.
    cluster.kill(other)?;
    cluster.restart(other).await?;
    let at_restarted = on(other)?;
    let stderr = refused(&at_restarted, &["get", "k"]).await?;
    ensure!(
        stderr.contains("etcdserver: user name is empty"),
        "{stderr}"
    );
    let read = wait_until(
        "the restarted member to serve bob",
        Duration::from_secs(30),
        || async {
            let run = at_restarted
                .run(&["--user", "bob:bobpw", "get", "k"], None)
                .await?;
            Ok(run.success.then_some(run.stdout))
        },
    )
    .await?;
    ensure!(read == "k\nroot\n", "bob read {read:?} after the restart");
    let listed = at_restarted
        .ok(&["--user", "root:rootpw", "user", "list"])
        .await?;
    ensure!(
        listed == "bob\nroot\n",
        "users after the restart: {listed:?}"
    );

    // Revoked through the leader: the follower refuses bob's next write.
    on(leader)?
        .ok(&[
            "--user",
            "root:rootpw",
            "role",
            "revoke-permission",
            "reader",
            "dir/",
            "dir0",
        ])
        .await?;
    let stderr = refused(&at_follower, &["--user", "bob:bobpw", "put", "dir/b", "1"]).await?;
    ensure!(stderr.contains("etcdserver: permission denied"), "{stderr}");
    let read = at_follower.ok(&["--user", "bob:bobpw", "get", "k"]).await?;
    ensure!(read == "k\nroot\n", "bob read {read:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_revoke_needs_write_access_to_the_leases_keys() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let cluster = ProcessCluster::start_with_args(1, CHEAP_HASHES).await?;
    let url = cluster.client_urls()[0].clone();
    let etcdctl = Etcdctl::new(&[&url])?;
    set_up_reader(&etcdctl).await?;
    let lease_with = |key: &'static str| {
        let etcdctl = &etcdctl;
        async move {
            // A lease grant needs no user, as etcd's.
            let granted = etcdctl.ok(&["lease", "grant", "600"]).await?;
            let id = granted
                .split_whitespace()
                .nth(1)
                .context("no lease id")?
                .to_string();
            if !key.is_empty() {
                let lease = format!("--lease={id}");
                etcdctl
                    .ok(&["--user", "root:rootpw", "put", key, "v", &lease])
                    .await?;
            }
            anyhow::Ok(id)
        }
    };
    let leased = lease_with("k2").await?;
    let stderr = refused(&etcdctl, &["lease", "revoke", &leased]).await?;
    ensure!(
        stderr.contains("etcdserver: user name is empty"),
        "{stderr}"
    );
    let stderr = refused(
        &etcdctl,
        &["--user", "bob:bobpw", "lease", "revoke", &leased],
    )
    .await?;
    ensure!(stderr.contains("etcdserver: permission denied"), "{stderr}");
    let kept = etcdctl
        .ok(&["--user", "root:rootpw", "get", "k2", "--print-value-only"])
        .await?;
    ensure!(kept == "v\n", "k2 after the refused revokes: {kept:?}");
    etcdctl
        .ok(&["--user", "root:rootpw", "lease", "revoke", &leased])
        .await?;
    // A lease without keys: anyone may revoke it.
    let empty = lease_with("").await?;
    etcdctl.ok(&["lease", "revoke", &empty]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_gateway_authenticates_with_the_authorization_header() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let cluster = ProcessCluster::start_with_args(1, CHEAP_HASHES).await?;
    let url = cluster.client_urls()[0].clone();
    set_up_reader(&Etcdctl::new(&[&url])?).await?;
    let range_k = r#"{"key":"aw=="}"#;
    let (status, body) = post(&url, "/v3/kv/range", range_k, None).await?;
    ensure!(
        status == 400 && body.contains("etcdserver: user name is empty"),
        "{status} {body}"
    );
    let (status, body) = post(
        &url,
        "/v3/auth/authenticate",
        r#"{"name":"bob","password":"wrong"}"#,
        None,
    )
    .await?;
    ensure!(
        status == 400 && body.contains("authentication failed"),
        "{status} {body}"
    );
    let token = bobs_token(&url).await?;
    let (status, body) = post(&url, "/v3/kv/range", range_k, Some(&token)).await?;
    ensure!(status == 200 && body.contains("\"kvs\""), "{status} {body}");
    let (status, body) = post(
        &url,
        "/v3/kv/put",
        r#"{"key":"aw==","value":"eA=="}"#,
        Some(&token),
    )
    .await?;
    ensure!(
        status == 403 && body.contains("etcdserver: permission denied"),
        "{status} {body}"
    );
    let (status, body) = post(&url, "/v3/kv/range", range_k, Some("not.a-token")).await?;
    ensure!(
        status == 401 && body.contains("etcdserver: invalid auth token"),
        "{status} {body}"
    );
    let (status, body) = post(&url, "/v3/auth/status", "{}", None).await?;
    ensure!(
        status == 200 && body.contains("\"enabled\":true"),
        "{status} {body}"
    );
    Ok(())
}

/// `--auth-token` for JSON Web Tokens signed with the RSA test key of `rampart-server`; with
/// only its public half when `verify_only`.
fn jwt_flag(verify_only: bool) -> String {
    let keys =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/rampart-server/testdata");
    let public = keys.join("jwt-rsa.pub");
    let mut flag = format!(
        "--auth-token=jwt,sign-method=RS256,pub-key={}",
        public.display()
    );
    if !verify_only {
        flag += &format!(",priv-key={}", keys.join("jwt-rsa.pem").display());
    }
    flag
}

#[tokio::test(flavor = "multi_thread")]
async fn json_web_tokens_are_good_on_every_member_until_the_auth_store_changes(
) -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let jwt = jwt_flag(false);
    let cluster = ProcessCluster::start_with_args(3, &[CHEAP_HASHES[0], &jwt]).await?;
    let urls = cluster.client_urls();
    let leader = cluster.leader_index(&[0, 1, 2]).await?;
    let (issuer, checker) = ((leader + 1) % 3, (leader + 2) % 3);
    let admin = Etcdctl::new(&[&urls[leader]])?;
    set_up_reader(&admin).await?;

    let token = bobs_token(&urls[issuer]).await?;
    // etcd's claims, in a signed JWT (header.claims.signature, base64url).
    let claims = token.split('.').nth(1).context("not a JWT")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims)?)?;
    ensure!(
        claims["username"] == "bob" && claims["revision"].is_u64() && claims["exp"].is_u64(),
        "claims {claims}"
    );

    // Checked by another member, which keeps no state of it.
    let range_k = r#"{"key":"aw=="}"#;
    let (status, body) = post(&urls[checker], "/v3/kv/range", range_k, Some(&token)).await?;
    ensure!(status == 200 && body.contains("\"kvs\""), "{status} {body}");
    let forged = format!("{}x", &token[..token.len() - 1]);
    let (status, body) = post(&urls[checker], "/v3/kv/range", range_k, Some(&forged)).await?;
    ensure!(
        status == 401 && body.contains("etcdserver: invalid auth token"),
        "{status} {body}"
    );

    // A change of the auth store makes it too old; etcdctl authenticates anew and goes on.
    admin
        .ok(&["--user", "root:rootpw", "user", "add", "dave:davepw"])
        .await?;
    let body = wait_until(
        "the checker to apply the new user",
        Duration::from_secs(10),
        || async {
            let (status, body) =
                post(&urls[checker], "/v3/kv/range", range_k, Some(&token)).await?;
            Ok((status != 200).then_some(body))
        },
    )
    .await?;
    ensure!(
        body.contains("etcdserver: revision of auth store is old"),
        "{body}"
    );
    let everywhere = Etcdctl::new(&urls.iter().map(String::as_str).collect::<Vec<_>>())?;
    let read = everywhere.ok(&["--user", "bob:bobpw", "get", "k"]).await?;
    ensure!(read == "k\nv\n", "bob read {read:?}");

    // A member given only the public key verifies tokens but issues none, as etcd's.
    let verify_only = jwt_flag(true);
    let single = ProcessCluster::start_with_args(1, &[CHEAP_HASHES[0], &verify_only]).await?;
    let url = single.client_urls()[0].clone();
    let etcdctl = Etcdctl::new(&[&url])?;
    etcdctl.ok(&["user", "add", "root:rootpw"]).await?;
    etcdctl.ok(&["user", "grant-role", "root", "root"]).await?;
    etcdctl.ok(&["auth", "enable"]).await?;
    let stderr = refused(&etcdctl, &["--user", "root:rootpw", "get", "k"]).await?;
    ensure!(
        stderr.contains("auth: token signing attempted with verify-only key"),
        "{stderr}"
    );
    Ok(())
}

/// The token the gateway of the member at `url` gives bob (of [`set_up_reader`]).
async fn bobs_token(url: &str) -> anyhow::Result<String> {
    let (status, body) = post(
        url,
        "/v3/auth/authenticate",
        r#"{"name":"bob","password":"bobpw"}"#,
        None,
    )
    .await?;
    ensure!(status == 200, "{status} {body}");
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    Ok(answer["token"].as_str().context("no token")?.to_string())
}

/// A POST of the JSON `body` to `path`, with `token` as its `Authorization` header: the
/// answer's status and body.
async fn post(
    url: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let headers: Vec<(&str, &str)> = token.map(|t| ("Authorization", t)).into_iter().collect();
    let answer = send_with(url, "POST", path, &headers, body.as_bytes()).await?;
    Ok((answer.status, answer.body))
}
