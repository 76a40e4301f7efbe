//! A client cannot hold a connection by sending nothing, or next to nothing
//! (`general_settings.client_read_timeout`): over real sockets, a connection silent from the
//! start, a request head that never ends (or is trickled a byte at a time), and a keep-alive
//! connection left idle are closed; a body that stalls mid-way is a 408 with its spend-log
//! row; a body that keeps coming, however slowly, is served. A client that stops reading a stream (`client_write_timeout`) is let go,
//! with the upstream's stream, and its request logged. Nor can clients hold more connections
//! than `max_client_connections`: one beyond it waits until another closes. Nor have the
//! gateway hold more request body bytes than `max_request_bytes_in_flight`, over HTTP/1 or on
//! the streams of one HTTP/2 connection: a request past it is a 503.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use guardrail_gateway::app::Gateway;
use guardrail_tower_testkit::mock::MockUpstream;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The limit the tests run with.
const LIMIT: Duration = Duration::from_millis(400);

/// A gateway config with model `m` at `base` and `deadline` (`client_read_timeout` or
/// `client_write_timeout`) at [`LIMIT`].
fn config(base: &str, db: &std::path::Path, deadline: &str) -> String {
    format!(
        r#"
model_list:
  - model_name: m
    litellm_params: {{model: openai/m, api_base: "{base}", api_key: sk-up}}
general_settings:
  spend_logs: "sqlite://{db}"
  {deadline}: {limit}
"#,
        db = db.display(),
        limit = LIMIT.as_secs_f64(),
    )
}

/// Reads what the server sends until it closes the connection (bounded: a server that never
/// closes fails the test); what it sent, and how long that took.
async fn until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the gateway kept the connection open");
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

const BODY: &str = r#"{"model": "m", "messages": [{"role": "user", "content": "hello"}]}"#;

fn head(length: usize) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    )
}

#[tokio::test]
async fn silent_and_stalling_clients_are_cut_off_and_slow_ones_served() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let gateway =
        Gateway::from_config_str(&config(&upstream.base_url(), &db, "client_read_timeout"))
            .await
            .unwrap();
    let running = support::serve(gateway).await;
    let addr = running.local_addr();

    // Silent from the start; a head that never ends: closed at the limit, nothing answered.
    for sends in [
        &b""[..],
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n",
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(sends).await.unwrap();
        let (sent, took) = until_closed(&mut stream).await;
        assert!(took >= LIMIT - Duration::from_millis(50), "{took:?}");
        assert!(!sent.contains("200 OK"), "{sent}");
    }

    // A head trickled a byte at a time, each well within the limit (a slowloris): the bytes
    // are no request, and the connection is closed within two limits all the same.
    let mut trickled = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in head(BODY.len()).as_bytes() {
        if trickled.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(LIMIT / 8).await;
        assert!(
            started.elapsed() < LIMIT * 2 + Duration::from_millis(600),
            "a trickled head kept its connection"
        );
    }
    let (sent, _) = until_closed(&mut trickled).await;
    assert!(closed || started.elapsed() <= LIMIT * 2 + Duration::from_millis(600));
    assert!(!sent.contains("200 OK"), "{sent}");

    // A request served, then the connection left idle: closed once the limit passes.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(format!("{}{BODY}", head(BODY.len())).as_bytes())
        .await
        .unwrap();
    let (sent, took) = until_closed(&mut idle).await;
    assert!(sent.starts_with("HTTP/1.1 200 OK"), "{sent}");
    assert!(sent.contains("\"choices\""), "{sent}");
    assert!(took >= LIMIT - Duration::from_millis(50), "{took:?}");

    // A body that stops half-way: a 408 that says why, then the connection closes.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(format!("{}{}", head(BODY.len()), &BODY[..20]).as_bytes())
        .await
        .unwrap();
    let (sent, _) = until_closed(&mut stalled).await;
    assert!(sent.starts_with("HTTP/1.1 408 Request Timeout"), "{sent}");
    let body: Value = serde_json::from_str(&sent[sent.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": {
            "message": format!("the request body stalled: nothing arrived for {} s", LIMIT.as_secs_f64()),
            "type": "invalid_request_error", "param": null, "code": "request_timeout"}})
    );

    // A body that keeps coming, slower than the limit in all but never silent that long: served.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(head(BODY.len()).as_bytes()).await.unwrap();
    for piece in BODY.as_bytes().chunks(BODY.len() / 4 + 1) {
        tokio::time::sleep(LIMIT / 2).await;
        slow.write_all(piece).await.unwrap();
    }
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");

    // Every request that arrived has its row: the stalled one as a 408 failure.
    running.stop().await.unwrap();
    let rows = support::spend_rows(&db).await;
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let stalled: Vec<_> = rows
        .iter()
        .filter(|r| r.metadata.http_status == 408)
        .collect();
    assert_eq!(stalled.len(), 1, "{rows:#?}");
    assert_eq!(stalled[0].status.as_str(), "failure");
}

/// An upstream that streams 64 KiB chat chunks as fast as it may, forever; `dropped` is set
/// when the gateway lets go of the stream.
async fn endless_upstream(dropped: Arc<AtomicBool>) -> String {
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let event = Bytes::from(format!(
        "data: {}\n\n",
        serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": "x".repeat(65536)}, "finish_reason": null}]})
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let (event, flag) = (event.clone(), Flag(Arc::clone(&dropped)));
            async move {
                let frames = futures_util::stream::repeat_with(move || {
                    let _alive = &flag;
                    Ok::<_, std::convert::Infallible>(event.clone())
                });
                axum::response::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(axum::body::Body::from_stream(frames))
                    .unwrap()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn a_client_that_stops_reading_is_let_go_and_its_request_logged() {
    let dropped = Arc::new(AtomicBool::new(false));
    let base = endless_upstream(Arc::clone(&dropped)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let config = config(&base, &db, "client_write_timeout");
    let running = support::serve(Gateway::from_config_str(&config).await.unwrap()).await;

    // A client with a small receive window that reads the head, then nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(running.local_addr()).await.unwrap();
    let body = r#"{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}"#;
    client
        .write_all(format!("{}{body}", head(body.len())).as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    let n = client.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200 OK"));

    // The gateway gives up on it, and lets go of the upstream's stream.
    let started = Instant::now();
    while !dropped.load(Ordering::SeqCst) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the gateway still holds the upstream's stream for a client that reads nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connection is closed: what was buffered, then its end.
    let (_, _) = until_closed(&mut client).await;

    // The request has its row.
    running.stop().await.unwrap();
    let rows = support::spend_rows(&db).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].status.as_str(), "failure", "{:#?}", rows[0]);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_and_a_busy_one_kept() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let config = config(&upstream.base_url(), &db, "client_read_timeout");
    let running = support::serve(Gateway::from_config_str(&config).await.unwrap()).await;

    let stream = TcpStream::connect(running.local_addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    // Requests over three limits, one at a time: the connection is kept while it is used.
    let started = Instant::now();
    while started.elapsed() < LIMIT * 3 {
        let request = http::Request::post(running.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        tokio::time::sleep(LIMIT / 4).await;
    }
    // Left with no stream: closed within two limits.
    let idle = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was kept open");
    assert!(
        idle.elapsed() <= LIMIT * 2 + Duration::from_millis(200),
        "{:?}",
        idle.elapsed()
    );
}

/// Sends `request` on `stream` and reads its response ([`read_response`]).
async fn exchange_with(stream: &mut TcpStream, request: &[u8], within: Duration) -> Option<String> {
    stream.write_all(request).await.ok()?;
    read_response(stream, within).await
}

/// Reads a response (a head and a `content-length` body) from `stream` within `within`; what
/// it read, or `None` when nothing whole came in time.
async fn read_response(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|n| n.trim().parse::<usize>().ok())?;
                if got.len() >= end + 4 + length {
                    return Some(text);
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// [`exchange_with`] a chat request.
async fn exchange(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let request = format!("{}{BODY}", head(BODY.len()));
    exchange_with(stream, request.as_bytes(), within).await
}

/// `general_settings.max_client_connections`: while two connections are open at a limit of
/// two, a third is not served (it waits in the listen queue, its request unanswered); once one
/// of the two closes, it is, and the one still open keeps being served. `/metrics` counts them.
#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    // The write deadline at the tests' limit changes nothing here (every write is taken at
    // once); the read deadline stays at its default, so the held connections are not closed.
    let config = config(&upstream.base_url(), &db, "client_write_timeout");
    let config = format!(
        "{config}  max_client_connections: 2\nlitellm_settings:\n  callbacks: [\"prometheus\"]\n"
    );
    let gateway = Gateway::from_config_str(&config).await.unwrap();
    assert_eq!(gateway.max_client_connections(), 2);
    let running = support::serve(gateway).await;
    let addr = running.local_addr();

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let answer = exchange(&mut stream, Duration::from_secs(10)).await;
        assert!(answer.is_some_and(|a| a.starts_with("HTTP/1.1 200 OK")));
        held.push(stream);
    }

    // The system completes the handshake (the listen queue), the gateway does not serve it.
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        exchange(&mut waiting, Duration::from_millis(600)).await,
        None,
        "a connection beyond the limit was served"
    );

    // One of the two leaves: the waiting connection's request, sent already, is answered.
    drop(held.remove(0));
    let answer = read_response(&mut waiting, Duration::from_secs(10)).await;
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200 OK") && a.contains("\"chat.completion\"")),
        "{answer:?}"
    );
    // The connection that stayed open is still served.
    let answer = exchange(&mut held[0], Duration::from_secs(10)).await;
    assert!(answer.is_some_and(|a| a.starts_with("HTTP/1.1 200 OK")));

    // The metrics say so: two open, a limit of two, reached twice (the two first connections,
    // then the waiting one taken in).
    let scrape = b"GET /metrics HTTP/1.1\r\nhost: gw\r\n\r\n";
    let got = exchange_with(&mut held[0], scrape, Duration::from_secs(10))
        .await
        .unwrap();
    for line in [
        "guardrail_tower_client_connections 2",
        "guardrail_tower_client_connections_limit 2",
        "guardrail_tower_client_connection_limit_reached_total 2",
    ] {
        assert!(got.lines().any(|l| l == line), "{line} in:\n{got}");
    }
}

/// `general_settings.max_request_bytes_in_flight`: while one client holds most of the bytes
/// the gateway may hold (a 4,050-byte body declared and half sent), a request that would pass
/// the limit is a 503 `server_overloaded` with `retry-after`, at once and with its spend-log
/// row: one declaring its length, and one chunked, refused at the chunk that does not fit. The
/// held request, once whole, is served; then the refused one fits and is served too. Before,
/// bodies were bounded one by one only, and a client sending large bodies on many connections
/// and streams had the gateway hold them all.
#[tokio::test]
async fn request_bodies_beyond_the_bytes_in_flight_are_refused_until_room_is_made() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let config = config(&upstream.base_url(), &db, "client_write_timeout");
    let config = format!(
        "{config}  max_request_body_bytes: 4096\n  max_request_bytes_in_flight: 4096\n\
         litellm_settings:\n  callbacks: [\"prometheus\"]\n"
    );
    let gateway = Gateway::from_config_str(&config).await.unwrap();
    assert_eq!(gateway.request_bytes().limit(), 4096);
    let running = support::serve(gateway).await;
    let addr = running.local_addr();

    // 4,050 bytes of 4,096 declared, half of them sent: the gateway holds them all from the head on.
    let big = format!(
        r#"{{"model": "m", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "a".repeat(4050 - BODY.len() + 5)
    );
    assert_eq!(big.len(), 4050);
    let mut holder = TcpStream::connect(addr).await.unwrap();
    holder
        .write_all(format!("{}{}", head(big.len()), &big[..2000]).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let refused = |answer: Option<String>| {
        let answer = answer.expect("no answer");
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable"),
            "{answer}"
        );
        assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
        let body: Value =
            serde_json::from_str(&answer[answer.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "message": "the gateway holds as many request bytes as it may at once \
                            (general_settings.max_request_bytes_in_flight); retry shortly",
                "type": "service_unavailable_error", "param": null, "code": "server_overloaded"}})
        );
    };
    // 66 more bytes declared do not fit.
    let mut other = TcpStream::connect(addr).await.unwrap();
    refused(exchange(&mut other, Duration::from_secs(10)).await);
    // Nor does a chunked body's first chunk.
    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n{:x}\r\n{BODY}\r\n0\r\n\r\n",
        BODY.len()
    );
    let mut chunks = TcpStream::connect(addr).await.unwrap();
    refused(exchange_with(&mut chunks, chunked.as_bytes(), Duration::from_secs(10)).await);

    // The held request, once whole, is served; then there is room again.
    holder.write_all(&big.as_bytes()[2000..]).await.unwrap();
    let answer = read_response(&mut holder, Duration::from_secs(10)).await;
    assert!(answer.is_some_and(|a| a.starts_with("HTTP/1.1 200 OK")));
    let mut again = TcpStream::connect(addr).await.unwrap();
    let answer = exchange(&mut again, Duration::from_secs(10)).await;
    assert!(answer.is_some_and(|a| a.starts_with("HTTP/1.1 200 OK")));
    let answer = exchange_with(&mut again, chunked.as_bytes(), Duration::from_secs(10)).await;
    assert!(answer.is_some_and(|a| a.starts_with("HTTP/1.1 200 OK")));

    // Nothing held now; the limit and the two refusals on `/metrics`.
    let scrape = b"GET /metrics HTTP/1.1\r\nhost: gw\r\n\r\n";
    let got = exchange_with(&mut again, scrape, Duration::from_secs(10))
        .await
        .unwrap();
    for line in [
        "guardrail_tower_request_bytes_in_flight 0",
        "guardrail_tower_request_bytes_in_flight_limit 4096",
        "guardrail_tower_request_bytes_refused_total 2",
    ] {
        assert!(got.lines().any(|l| l == line), "{line} in:\n{got}");
    }

    // Every request has its row: the two refused as 503 failures.
    running.stop().await.unwrap();
    let rows = support::spend_rows(&db).await;
    assert_eq!(rows.len(), 5, "{rows:#?}");
    let refused: Vec<_> = rows
        .iter()
        .filter(|r| r.metadata.http_status == 503)
        .collect();
    assert_eq!(refused.len(), 2, "{rows:#?}");
    assert!(refused.iter().all(|r| r.status.as_str() == "failure"));
}

/// The same bound over HTTP/2, where one connection carries many streams: a stream holding most
/// of the bytes (its body declared, a first chunk sent, the rest held back) leaves no room for
/// a second stream's body on the same connection, which is a 503 at once; a third stream
/// without a declared length is refused at its first chunk. Once the first body ends, the
/// connection serves the next stream.
#[tokio::test]
async fn http2_streams_share_the_bytes_in_flight() {
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let config = config(&upstream.base_url(), &db, "client_write_timeout");
    let config =
        format!("{config}  max_request_body_bytes: 4096\n  max_request_bytes_in_flight: 4096\n");
    let running = support::serve(Gateway::from_config_str(&config).await.unwrap()).await;
    let stream = TcpStream::connect(running.local_addr()).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let url = running.url("/v1/chat/completions");
    let post = |length: Option<usize>, body| {
        let mut request = http::Request::post(&url).header("content-type", "application/json");
        if let Some(length) = length {
            request = request.header("content-length", length);
        }
        request.body(body).unwrap()
    };
    type Chunks =
        tokio::sync::mpsc::UnboundedSender<Result<http_body::Frame<Bytes>, std::io::Error>>;
    let whole = |bytes: &'static [u8]| {
        Full::new(Bytes::from_static(bytes))
            .map_err(|e| match e {})
            .boxed()
    };
    let send = |chunks: &Chunks, bytes: &[u8]| {
        chunks
            .send(Ok(http_body::Frame::data(Bytes::copy_from_slice(bytes))))
            .unwrap();
    };
    let chunked = || {
        let (tx, mut rx): (Chunks, _) = tokio::sync::mpsc::unbounded_channel();
        let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        (tx, http_body_util::combinators::BoxBody::new(body))
    };

    // 4,050 bytes declared; 2,000 sent.
    let big = format!(
        r#"{{"model": "m", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "a".repeat(4050 - BODY.len() + 5)
    );
    let (held, body) = chunked();
    send(&held, &big.as_bytes()[..2000]);
    let mut first_sender = sender.clone();
    let request = post(Some(4050), body);
    let first = tokio::spawn(async move { first_sender.send_request(request).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let status = |response: http::Response<hyper::body::Incoming>| async move {
        let status = response.status().as_u16();
        let retry = response.headers().get("retry-after").cloned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, retry, String::from_utf8_lossy(&body).into_owned())
    };
    let mut second = sender.clone();
    let (code, retry, body) = status(
        second
            .send_request(post(Some(BODY.len()), whole(BODY.as_bytes())))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (code, retry.as_ref().map(|v| v.to_str().unwrap())),
        (503, Some("1")),
        "{body}"
    );
    assert!(body.contains("\"code\":\"server_overloaded\""), "{body}");
    let (chunks, body) = chunked();
    send(&chunks, BODY.as_bytes());
    drop(chunks);
    let (code, _, body) = status(second.send_request(post(None, body)).await.unwrap()).await;
    assert_eq!(code, 503, "{body}");

    // The first body whole: served; then the connection has room again.
    send(&held, &big.as_bytes()[2000..]);
    drop(held);
    let (code, _, body) = status(first.await.unwrap()).await;
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = status(
        second
            .send_request(post(Some(BODY.len()), whole(BODY.as_bytes())))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
}
