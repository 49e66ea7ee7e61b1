//! The CLI's side of the admin API: one HTTP/1.1 request per command.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpStream;

/// How long the CLI waits for the admin API.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why an admin call failed; each says what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://HOST:PORT` or `https://HOST:PORT`.
    #[error("admin URL {0:?} must look like http://127.0.0.1:7780 or https://HOST:PORT")]
    BadUrl(String),
    /// The CA file for an https admin URL is unusable.
    #[error("admin CA: {0} (check --admin-ca / STANDBY_ADMIN_CA)")]
    Ca(String),
    /// Nothing answers there.
    #[error("cannot reach the admin API at {url}: {reason} (is the node running? check --admin / STANDBY_ADMIN)")]
    Unreachable {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The token was missing or wrong.
    #[error("the admin API refused the token: {0} (check --token-file / STANDBY_TOKEN)")]
    Unauthorized(String),
    /// The API answered with an error.
    #[error("{0}")]
    Refused(String),
    /// The answer was not what this version of the CLI understands.
    #[error("unexpected answer from the admin API: {0}")]
    Unexpected(String),
}

/// An HTTP/1.1 client connection over `stream`, its driver running in the background.
async fn http1<S>(
    stream: S,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Makes one request and returns the JSON body of a 2xx answer. An `https://` URL is
/// verified against `ca`, or the system CA bundle.
pub async fn call(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
    ca: Option<&Path>,
) -> Result<serde_json::Value, ClientError> {
    let (tls, rest) = match (base.strip_prefix("https://"), base.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err(ClientError::BadUrl(base.to_owned())),
    };
    let authority = Some(rest.trim_end_matches('/'))
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
        .ok_or_else(|| ClientError::BadUrl(base.to_owned()))?;
    let connector = if tls {
        Some(crate::tls::client_connector(ca).map_err(ClientError::Ca)?)
    } else {
        None
    };
    let unreachable = |reason: String| ClientError::Unreachable {
        url: base.to_owned(),
        reason,
    };
    let exchange = async {
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut sender = match &connector {
            Some(connector) => {
                let host = authority
                    .rsplit_once(':')
                    .map_or(authority, |(host, _)| host)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|_| ClientError::BadUrl(base.to_owned()))?;
                let stream = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| unreachable(format!("TLS: {e}")))?;
                http1(stream)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?
            }
            None => http1(stream)
                .await
                .map_err(|e| unreachable(e.to_string()))?,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            );
        }
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let request = request
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ClientError::Unexpected(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok::<_, ClientError>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable("no answer within 5s".to_owned()))??;
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| ClientError::Unexpected(String::from_utf8_lossy(&bytes).into_owned()))?;
    if status.is_success() {
        return Ok(json);
    }
    let message = json
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("no reason given")
        .to_owned();
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ClientError::Unauthorized(message),
        _ => ClientError::Refused(message),
    })
}
