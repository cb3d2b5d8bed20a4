//! HTTP/1.1 requests to a node, with hyper's client.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::WAIT;

/// An HTTP client for one node (it pools connections, so publish loops stay cheap).
pub(crate) struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

/// A response: status and body.
pub(crate) struct Response {
    /// The status code.
    pub status: u16,
    /// The body as text.
    pub text: String,
    /// The headers.
    pub headers: hyper::HeaderMap,
}

impl Response {
    /// The value of header `name` (text), when present.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (`Null` when empty, a JSON string of the text when it is not JSON).
    pub(crate) fn json(&self) -> Value {
        if self.text.is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.text).unwrap_or_else(|_| Value::String(self.text.clone()))
    }
}

impl Http {
    /// A client for the node at `addr`.
    pub(crate) fn new(addr: SocketAddr) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    /// Sends one request; `Err` when the connection fails (refused, reset).
    pub(crate) async fn try_request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response, String> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(Response {
                status,
                text: String::from_utf8_lossy(&bytes).into_owned(),
                headers,
            })
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .map_err(|_| format!("no answer to {path} within {WAIT:?}"))?
    }

    /// Sends one request; fails the test when there is no answer.
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Response {
        self.try_request(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// `POST path` with `Authorization: Bearer <bearer>` (when given) and a JSON body.
    pub(crate) async fn post(&self, path: &str, bearer: Option<&str>, body: &str) -> (u16, Value) {
        let auth = bearer.map(|b| format!("Bearer {b}"));
        self.post_authorization(path, auth.as_deref(), body).await
    }

    /// `POST path` with this exact `Authorization` header value (when given).
    pub(crate) async fn post_authorization(
        &self,
        path: &str,
        authorization: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = authorization {
            headers.push(("authorization", a));
        }
        let r = self
            .request(Method::POST, path, &headers, body.as_bytes().to_vec())
            .await;
        (r.status, r.json())
    }

    /// `GET path`.
    pub(crate) async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path, &[], Vec::new()).await
    }
}
