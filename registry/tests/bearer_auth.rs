//! The bearer token flow against a small scripted registry and token server
//! (Debian's docker-registry has no token server; the root tests cover
//! anonymous and basic auth with the real one).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use kiln_registry::{Client, ClientOptions, Credentials, Error};

/// Answers like a registry behind a token server: /v2/ wants
/// `Bearer good-token`, /token hands it out for `ci:secret`. Records every
/// request line with its Authorization header.
fn serve() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            // kiln tries HTTPS first; a TLS handshake (0x16) gets the
            // connection closed, as a plain HTTP server would refuse it.
            if reader.fill_buf().map_or(true, |b| b.first() == Some(&0x16)) {
                continue;
            }
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut authorization = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.strip_prefix("Authorization: ") {
                    authorization = value.trim().to_owned();
                }
            }
            let path = request_line.split(' ').nth(1).unwrap_or("").to_owned();
            log.lock()
                .unwrap()
                .push(format!("{path} [{authorization}]"));
            // "ci:secret" in base64.
            let (status, headers, body) = if path.starts_with("/token") {
                if authorization == "Basic Y2k6c2VjcmV0" {
                    (
                        "200 OK",
                        String::new(),
                        r#"{"token":"good-token"}"#.to_owned(),
                    )
                } else {
                    (
                        "401 Unauthorized",
                        String::new(),
                        r#"{"details":"bad credentials"}"#.to_owned(),
                    )
                }
            } else if authorization == "Bearer good-token" {
                ("200 OK", String::new(), "{}".to_owned())
            } else {
                (
                    "401 Unauthorized",
                    format!("WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test-registry\"\r\n"),
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_owned(),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

fn client(port: u16, password: &str) -> Client {
    let host = format!("127.0.0.1:{port}");
    Client::new(
        &host,
        &host,
        ClientOptions {
            insecure: false,
            credentials: Some(Credentials {
                username: "ci".into(),
                password: password.into(),
            }),
            certs_dir: None,
        },
    )
    .unwrap()
}

#[test]
fn a_challenge_leads_to_a_token_that_is_reused() {
    let (port, seen) = serve();
    let client = client(port, "secret");
    client.ping().unwrap();
    client.ping().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            "/v2/ []".to_owned(),
            "/token?service=test-registry [Basic Y2k6c2VjcmV0]".to_owned(),
            "/v2/ [Bearer good-token]".to_owned(),
            "/v2/ [Bearer good-token]".to_owned(),
        ]
    );
}

#[test]
fn a_refused_token_is_an_auth_failure_naming_the_registry() {
    let (port, _) = serve();
    let err = client(port, "wrong").ping().unwrap_err();
    assert!(matches!(err, Error::AuthFailed { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("authentication to 127.0.0.1:{port} failed"))
            && message.contains("token server")
            && message.contains("kiln login"),
        "{message}"
    );
}
