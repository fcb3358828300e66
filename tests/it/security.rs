//! Secrets stay secret, TLS is checked, and nothing from the config, the command
//! line or the vendor can write SQL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use freshen::sandbox::{Fault, Sandbox, SandboxOptions, parse_fault};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::harness::{Conf, TestEnv, another_sandbox, assert_exit, read_json, text};

/// A value no one would type by chance: if it shows up anywhere, it leaked.
const SECRET: &str = "Zq9s3cr3tTok3nVw7K";

const SECRET_HEADERS: &str =
    "headers = { Authorization = \"Bearer ${FRESHEN_TOKEN}\", X-Api-Key = \"${FRESHEN_TOKEN}\" }";

/// Whether any recorded call carried the secret in any header.
fn carried_secret(sandbox: &Sandbox) -> bool {
    sandbox
        .headers_seen()
        .iter()
        .flatten()
        .any(|(_, v)| v.contains(SECRET))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_origin_carries_no_secret_and_fails_the_record() {
    // The other origin records every header it is sent.
    let elsewhere = another_sandbox(SandboxOptions {
        record_headers: true,
        ..SandboxOptions::default()
    })
    .await;
    let port = elsewhere.addr().port();
    let mut env = TestEnv::new(6).await;
    let faults = [
        // Another port on the same host, and another host name: both other origins.
        format!("2=redirect:http://127.0.0.1:{port}/v1/people/{{key}}"),
        format!("4=redirect:http://localhost:{port}/v1/people/{{key}}"),
        // Within the vendor's own origin: followed, credentials and all.
        "3=redirect:/v1/people/3b".to_owned(),
    ];
    env.vendor(SandboxOptions {
        faults: faults.iter().map(|f| parse_fault(f).unwrap()).collect(),
        record_headers: true,
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        headers: SECRET_HEADERS,
        ..Conf::default()
    });

    let out = env
        .freshen_with_env(&["run"], &[("FRESHEN_TOKEN", SECRET)])
        .await;
    assert_exit(&out, 0);

    assert!(
        !carried_secret(&elsewhere),
        "a secret reached another origin: {:?}",
        elsewhere.headers_seen()
    );
    assert_eq!(
        elsewhere.stats().requests,
        0,
        "cross-origin redirects are not followed"
    );
    for (key, host) in [("2", "127.0.0.1"), ("4", "localhost")] {
        let (state, reason, _) = env.item(key).await;
        let reason = reason.unwrap_or_default();
        assert_eq!(state, "failed", "{key}");
        assert!(
            reason.contains(&format!("307 Temporary Redirect to http://{host}:{port}"))
                && reason.contains("another origin")
                && reason.contains("api.base_url")
                && !reason.contains("/v1/people"),
            "only the origin, never the path or query: {reason}"
        );
    }

    // The same-origin redirect was followed with the credentials: the vendor saw them
    // (so the check above is not empty), and record 3 holds what /3b answers.
    let vendor = env.sandbox();
    assert_eq!(vendor.stats().per_key_ok.get("3b"), Some(&1));
    assert!(carried_secret(vendor));
    let three = env.records().await.into_iter().find(|r| r.id == 3).unwrap();
    let p = freshen::sandbox::person("3b");
    assert_eq!(three.title.as_deref(), p["title"].as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_summaries_errors_the_database_or_status() {
    let mut env = TestEnv::new(12).await;
    env.vendor(SandboxOptions {
        faults: [
            "3=404",
            "4=malformed",
            "5=flaky:10",
            "6=oversized",
            "7=wrong-type",
            "8=throttle:1",
        ]
        .iter()
        .map(|f| parse_fault(f).unwrap())
        .collect(),
        record_headers: true,
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        headers: SECRET_HEADERS,
        max_attempts: 2,
        max_outage: "1s",
        ..Conf::default()
    });
    let vars = [("FRESHEN_TOKEN", SECRET)];
    let summary = env.dir.path().join("summary.json");
    let summary_arg = summary.to_str().unwrap();
    let mut seen = String::new();
    let mut keep = |out: &std::process::Output| {
        seen.push_str(&text(&out.stdout));
        seen.push_str(&text(&out.stderr));
    };

    // A run with successes and every kind of failure, logging everything.
    let out = env
        .freshen_with_env(
            &["run", "--log", "trace", "--summary-json", summary_arg],
            &vars,
        )
        .await;
    assert_exit(&out, 0);
    assert!(
        text(&out.stderr).contains("TRACE"),
        "trace logging is on, so the check below covers it"
    );
    keep(&out);
    assert_eq!(read_json(&summary)["records"]["failed"], 5);
    assert!(
        carried_secret(env.sandbox()),
        "the secret was sent to the vendor"
    );

    for args in [
        &["status"][..],
        &["status", "--json"],
        &["status", "--log", "trace"],
    ] {
        let out = env.freshen_with_env(args, &vars).await;
        assert_exit(&out, 0);
        keep(&out);
    }

    // The vendor gone: connection errors, the breaker, an outage, all at trace level.
    env.sandbox.take().unwrap().stop().await;
    let out = env
        .freshen_with_env(
            &[
                "run",
                "--new",
                "--log",
                "trace",
                "--summary-json",
                summary_arg,
            ],
            &vars,
        )
        .await;
    assert_exit(&out, 4);
    keep(&out);

    // Configuration errors that involve the secret header.
    let config = std::fs::read_to_string(env.config_path()).unwrap();
    let bad = [
        config.replace("[limits]", "[limits]\nrat = 1"),
        config.replace(
            "base_url = \"http://127.0.0.1",
            "base_url = \"http://10.255.0.1",
        ),
        config.replace(
            "X-Api-Key = \"${FRESHEN_TOKEN}\"",
            "X-Api-Key = \"${FRESHEN_BAD}\"",
        ),
    ];
    for (i, text_) in bad.iter().enumerate() {
        assert_ne!(text_, &config, "edit {i} changed nothing");
        std::fs::write(env.config_path(), text_).unwrap();
        let out = env
            .freshen_with_env(
                &["run", "--log", "trace"],
                &[
                    ("FRESHEN_TOKEN", SECRET),
                    ("FRESHEN_BAD", &format!("{SECRET}\n")),
                ],
            )
            .await;
        assert_exit(&out, 2);
        keep(&out);
    }

    assert!(
        !seen.contains(SECRET),
        "the secret leaked into output:\n{seen}"
    );
    let json = std::fs::read_to_string(&summary).unwrap();
    assert!(!json.contains(SECRET), "{json}");
    let dump = env.dump().await;
    assert!(
        dump.contains("freshen_items"),
        "the dump covers freshen's tables"
    );
    assert!(
        !dump.contains(SECRET),
        "the secret is in the database:\n{dump}"
    );
    // Freed pages and the write-ahead log too: the files' raw bytes.
    for name in ["test.db", "test.db-wal", "test.db-shm"] {
        if let Ok(bytes) = std::fs::read(env.dir.path().join(name)) {
            let found = bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
            assert!(!found, "the secret is in the bytes of {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_remote_host_with_a_secret_is_refused_at_start() {
    let env = TestEnv::new(1).await;
    env.write_config(&Conf {
        headers: SECRET_HEADERS,
        ..Conf::default()
    });
    env.edit_config(|s| s.replace("http://127.0.0.1:9", "http://vendor.invalid"));
    let vars = [("FRESHEN_TOKEN", SECRET)];
    let out = env.freshen_with_env(&["run"], &vars).await;
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    assert!(
        err.contains("api.base_url") && err.contains("api.allow_insecure = true"),
        "{err}"
    );
    // Loopback is this machine: allowed (the run then fails to connect, not to start).
    env.edit_config(|s| s.replace("http://vendor.invalid", "http://localhost:9"));
    let out = env.freshen_with_env(&["status"], &vars).await;
    assert_exit(&out, 0);
}

/// A TLS listener for the sandbox: handshakes in `accept`, one at a time (tests only).
struct TlsListener {
    tcp: TcpListener,
    tls: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that refuses the certificate ends its handshake: next one.
            if let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(5), self.tls.accept(stream)).await
            {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A private CA and a server certificate it signed for localhost and 127.0.0.1:
/// (the CA's PEM, a rustls acceptor serving the server certificate).
fn private_ca() -> (String, TlsAcceptor) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "freshen test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &issuer).unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca_cert.pem(), TlsAcceptor::from(Arc::new(config)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_vendor_with_a_private_ca_works_with_ca_file_and_stops_clearly_without() {
    let (ca_pem, tls) = private_ca();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vendor = Sandbox::start_on(TlsListener { tcp, tls }, SandboxOptions::default()).unwrap();
    let url = format!("https://localhost:{}", vendor.addr().port());

    let env = TestEnv::new(8).await;
    env.write_config(&Conf {
        max_outage: "2s",
        ..Conf::default()
    });
    env.edit_config(|s| s.replace("http://127.0.0.1:9", &url));

    // Without the CA: the certificate is not trusted, and the message says what to set.
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    assert!(
        err.contains("TLS certificate is not trusted") && err.contains("api.ca_file"),
        "{err}"
    );
    assert_eq!(
        env.item_states().await,
        (0, 0, 8),
        "nothing failed, all pending"
    );
    // The calls it tried count among the calls, as connection errors do.
    let status = env.freshen(&["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let calls = &status["run"]["calls"];
    assert!(calls["transient"].as_i64().unwrap() >= 1, "{calls}");
    assert_eq!(calls["ok"], 0, "{calls}");

    // With it: the run resumes and completes over TLS.
    std::fs::write(env.dir.path().join("ca.pem"), &ca_pem).unwrap();
    env.set_keys(&[("api.ca_file", "\"ca.pem\"")]);
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert_eq!(env.item_states().await, (8, 0, 0));
    assert!(env.records().await.iter().all(|r| r.matches_vendor()));
    assert_eq!(vendor.stats().ok, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_injection_through_every_string_that_reaches_sql_leaves_the_database_intact() {
    let keys = [
        "plain",
        "x'; DROP TABLE people; --",
        "y\"); DELETE FROM freshen_items; --",
        "z' OR '1'='1",
        "w\\'; UPDATE people SET title = 'pwned'; --",
        "../../v1/people/plain",
    ];
    let mut env = TestEnv::with_text_keys(&keys).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    // The vendor echoes the key as `id`: map it into `title`, so every hostile key
    // also comes back as a hostile value to write.
    env.edit_config(|s| s.replace("\"/title\" = \"title\"", "\"/id\" = \"title\""));

    // A hostile `--ids` selects exactly its own record.
    let out = env.freshen(&["run", "--ids", "z' OR '1'='1"]).await;
    assert_exit(&out, 0);
    assert_eq!(env.item_states().await, (1, 0, 0));
    let db = env.db().await;
    let titled: Vec<String> = sqlx::query_scalar("SELECT id FROM people WHERE title IS NOT NULL")
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(titled, ["z' OR '1'='1"]);

    // Then all of them: each written with its own key, verbatim.
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert_eq!(env.item_states().await, (6, 0, 0));
    let db = env.db().await;
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, title FROM people ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
    db.close().await;
    assert_eq!(rows.len(), keys.len());
    for (id, title) in &rows {
        assert!(keys.contains(&id.as_str()));
        assert_eq!(
            title.as_deref(),
            Some(id.as_str()),
            "the value went in as data"
        );
    }
    assert_eq!(env.integrity().await, "ok");
    let dump = env.dump().await;
    for table in [
        "freshen_runs",
        "freshen_items",
        "freshen_credit_periods",
        "people",
    ] {
        assert!(dump.contains(&format!("-- {table}\n")), "{table} is gone");
    }

    // Names from the config: refused before any SQL is built.
    for (from, to, key) in [
        (
            "table = \"people\"",
            "table = \"people\\\" --\"",
            "source.table",
        ),
        (
            "key = \"id\"",
            "key = \"id); DROP TABLE people; --\"",
            "source.key",
        ),
        (
            "refreshed_at = \"refreshed_at\"",
            "refreshed_at = \"refreshed_at' OR 1=1\"",
            "source.refreshed_at",
        ),
        (
            "\"/score\" = \"score\"",
            "\"/score\" = \"score = 0, title\"",
            "api.response.\"/score\"",
        ),
    ] {
        let before = std::fs::read_to_string(env.config_path()).unwrap();
        env.edit_config(|s| s.replace(from, to));
        let out = env.freshen(&["run", "--new"]).await;
        assert_exit(&out, 2);
        let err = text(&out.stderr);
        assert!(
            err.contains(key) && err.contains("plain identifier"),
            "{err}"
        );
        std::fs::write(env.config_path(), before).unwrap();
    }
    assert_eq!(env.integrity().await, "ok");
    assert_eq!(env.records_count().await, keys.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_ids_value_for_an_integer_key_is_refused() {
    let env = TestEnv::new(3).await;
    env.write_config(&Conf::default());
    for ids in ["1 OR 1=1", "1; DROP TABLE people", "1..2; --"] {
        let out = env.freshen(&["run", "--ids", ids]).await;
        assert_exit(&out, 2);
        assert!(text(&out.stderr).contains("--ids"), "{}", text(&out.stderr));
    }
    assert_eq!(env.records_count().await, 3);
}

#[test]
fn redirect_faults_parse() {
    assert_eq!(
        parse_fault("9=redirect:http://127.0.0.1:1/v1/people/{key}").unwrap(),
        (
            "9".into(),
            Fault::Redirect("http://127.0.0.1:1/v1/people/{key}".into())
        )
    );
    assert!(parse_fault("9=redirect:nowhere").is_err());
}

/// `freshen sandbox`: its help lists only what it uses, and it stays on this
/// machine unless told otherwise: a simulated vendor open to the network would
/// be a surprise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_stays_on_loopback_unless_told_and_its_help_says_what_it_uses() {
    let env = TestEnv::new_sqlite(1).await;
    let out = env
        .bare_command(&["sandbox", "--help"])
        .output()
        .await
        .unwrap();
    assert_exit(&out, 0);
    let help = text(&out.stdout);
    for ignored in ["--config", "--database-url"] {
        assert!(!help.contains(ignored), "{ignored} in:\n{help}");
    }
    assert!(help.contains("--allow-remote"), "{help}");
    assert!(help.contains("--log"), "the sandbox logs: {help}");

    for addr in ["0.0.0.0:0", "192.0.2.1:0"] {
        let out = env
            .bare_command(&["sandbox", "--listen", addr])
            .output()
            .await
            .unwrap();
        assert_exit(&out, 2);
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("--listen {addr}")) && err.contains("--allow-remote"),
            "{err}"
        );
    }

    // Nor does the demo's vendor, which has no such flag.
    env.write_config(&Conf::default());
    let out = env.freshen(&["demo", "--listen", "0.0.0.0:0"]).await;
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("loopback only"),
        "{}",
        text(&out.stderr)
    );

    // Told: it listens there.
    let mut child = env
        .bare_command(&["sandbox", "--listen", "0.0.0.0:0", "--allow-remote"])
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the sandbox starts within 30 s")
        .unwrap()
        .unwrap_or_default();
    assert!(
        first.starts_with("sandbox listening on http://0.0.0.0:"),
        "{first}"
    );
    child.kill().await.unwrap();
}
