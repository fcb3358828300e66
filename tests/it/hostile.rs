//! A hostile or broken vendor: answers that never end, never come, break off, are
//! not JSON, or decompress without end. Each ends its record as a timeout or a
//! permanent failure within `api.timeout` and `api.max_body_bytes`, in bounded
//! memory. The vendors here are a few lines of raw TCP on loopback.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{Conf, TestEnv, assert_exit, text};

/// Serves every connection with `behave`, after reading the request head. Each
/// behaviour ends on its own (a write to a closed connection fails, or a bound).
async fn raw_vendor<F, Fut>(behave: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            tokio::spawn(behave(stream));
        }
    });
    addr
}

/// Two records, a 500 ms timeout, a 64 KiB body limit, two attempts, pointed at `addr`.
async fn env_for(addr: SocketAddr) -> TestEnv {
    let env = TestEnv::new(2).await;
    env.write_config(&Conf {
        max_attempts: 2,
        max_outage: "5s",
        ..Conf::default()
    });
    env.set_keys(&[
        ("api.base_url", &format!("\"http://{addr}\"")),
        ("api.timeout", "\"500ms\""),
        ("api.max_body_bytes", "65536"),
    ]);
    env
}

/// Runs freshen to the end (exit 0, both records failed) and returns the reasons,
/// and the most memory the process held (VmHWM), sampled while it ran.
async fn both_fail(env: &TestEnv) -> (Vec<String>, u64) {
    let mut child = env.spawn(&["run"]);
    let pid = child.id().unwrap();
    let mut peak_kib = 0;
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(line) = s.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            peak_kib = peak_kib.max(kib);
        }
        tokio::select! {
            status = child.wait() => break status.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr).await.unwrap();
    }
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(env.item_states().await, (0, 2, 0));
    let mut reasons = Vec::new();
    for key in ["1", "2"] {
        let (state, reason, _) = env.item(key).await;
        assert_eq!(state, "failed");
        reasons.push(reason.unwrap());
    }
    (reasons, peak_kib)
}

const CHUNKED_200: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_ends_is_cut_at_max_body_bytes_in_bounded_memory() {
    let addr = raw_vendor(|mut s| async move {
        let _ = s.write_all(CHUNKED_200).await;
        let mut chunk = format!("{:x}\r\n", 1 << 16).into_bytes();
        chunk.extend(std::iter::repeat_n(b' ', 1 << 16));
        chunk.extend_from_slice(b"\r\n");
        // As fast as loopback goes, up to 4 GiB, until freshen hangs up.
        for _ in 0..(1 << 16) {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    let env = env_for(addr).await;
    let (reasons, peak_kib) = both_fail(&env).await;
    for r in reasons {
        assert_eq!(r, "answer larger than api.max_body_bytes (65536 bytes)");
    }
    assert!(peak_kib < 256 * 1024, "peak memory {peak_kib} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_forever_times_out() {
    let addr = raw_vendor(|mut s| async move {
        let _ = s.write_all(CHUNKED_200).await;
        // One byte every 50 ms, for at most a minute.
        for _ in 0..1200 {
            if s.write_all(b"1\r\n \r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let env = env_for(addr).await;
    let (reasons, _) = both_fail(&env).await;
    for r in reasons {
        assert!(
            r.starts_with("no answer within api.timeout (500ms)")
                && r.ends_with("(after 2 attempts)"),
            "{r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_that_accepts_and_never_answers_times_out() {
    let addr = raw_vendor(|s| async move {
        // Holds the connection open, silent, for a minute at most.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    })
    .await;
    let env = env_for(addr).await;
    let (reasons, _) = both_fail(&env).await;
    for r in reasons {
        assert!(
            r.starts_with("no answer within api.timeout (500ms)")
                && r.ends_with("(after 2 attempts)"),
            "{r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_mid_body_is_retried_then_fails() {
    let addr = raw_vendor(|mut s| async move {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"title\": \"";
        let _ = s.write_all(head).await;
        let _ = s.flush().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Linger 0: closing sends a RST, not a FIN. (Deprecated because a non-zero
        // linger blocks the thread on drop; a zero one does not.)
        #[allow(deprecated)]
        let _ = s.set_linger(Some(Duration::ZERO));
        drop(s);
    })
    .await;
    let env = env_for(addr).await;
    let (reasons, _) = both_fail(&env).await;
    for r in reasons {
        assert!(
            r.starts_with("answer cut off") && r.ends_with("(after 2 attempts)"),
            "{r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_with_an_html_page_fails_the_record_permanently() {
    let addr = raw_vendor(|mut s| async move {
        let body = "<!DOCTYPE html><html><body>Please log in</body></html>";
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(answer.as_bytes()).await;
    })
    .await;
    let env = env_for(addr).await;
    let (reasons, _) = both_fail(&env).await;
    for r in reasons {
        assert!(r.starts_with("answer is not JSON: "), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_cut_at_max_body_bytes() {
    // 16 MiB of zeros in about 16 KiB: the compressed answer is well under the
    // 64 KiB limit, what it inflates to is 256 times over it.
    let bomb = tokio::task::spawn_blocking(|| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![b' '; 1 << 20];
        for _ in 0..16 {
            gz.write_all(&zeros).unwrap();
        }
        gz.finish().unwrap()
    })
    .await
    .unwrap();
    assert!(bomb.len() < 65536, "{}", bomb.len());
    let addr = raw_vendor(move |mut s| {
        let bomb = bomb.clone();
        async move {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                bomb.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&bomb).await;
        }
    })
    .await;
    let env = env_for(addr).await;
    let (reasons, _) = both_fail(&env).await;
    for r in reasons {
        assert_eq!(r, "answer larger than api.max_body_bytes (65536 bytes)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_that_is_not_there_is_an_outage_not_a_failure() {
    // A port nothing listens on: refused connections are the vendor being down,
    // so the run stops as an outage (exit 4) with every record still pending.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let env = TestEnv::new(5).await;
    env.write_config(&Conf {
        max_outage: "1s",
        ..Conf::default()
    });
    env.edit_config(|s| s.replace("http://127.0.0.1:9", &format!("http://{addr}")));
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 4);
    assert!(text(&out.stdout).contains("retry.max_outage"));
    assert_eq!(env.item_states().await, (0, 0, 5));
}
