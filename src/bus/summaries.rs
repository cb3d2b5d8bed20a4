//! Node summaries: the few figures each node shares with the cluster every second (what the
//! dashboard shows of every node), as opaque JSON text. A narrow trait of its own: Redis shares
//! them between nodes (`redis/summaries.rs`); in one process [`LocalSummaries`] keeps this node's
//! only. Bounded: a summary is at most [`MAX_SUMMARY_BYTES`], and at most [`MAX_NODES`] are read.

use std::time::Duration;

use bytes::Bytes;

use super::{BoxFuture, BusError};

/// Largest summary shared or read (a larger one is refused when shared, skipped when read).
pub(crate) const MAX_SUMMARY_BYTES: usize = 4096;
/// Most nodes whose summaries are read at once (the most recently shared).
pub(crate) const MAX_NODES: usize = 64;

/// The summaries of the cluster's nodes.
pub trait Summaries: Send + Sync + 'static {
    /// Shares `node`'s summary (JSON text, at most [`MAX_SUMMARY_BYTES`]); it is forgotten
    /// `ttl` after, unless shared again.
    fn share_summary(
        &self,
        node: &str,
        summary: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), BusError>>;
    /// The summaries not forgotten yet, this node's included: `(node, summary)`, at most
    /// [`MAX_NODES`], each at most [`MAX_SUMMARY_BYTES`].
    fn summaries(&self) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, BusError>>;
}

/// One node alone: its own summary is the cluster's.
#[derive(Default)]
pub(crate) struct LocalSummaries {
    /// The last summary shared, and when it is forgotten. Plain mutex, never held across `.await`.
    last: parking_lot::Mutex<Option<(String, Bytes, tokio::time::Instant)>>,
}

impl Summaries for LocalSummaries {
    fn share_summary(
        &self,
        node: &str,
        summary: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), BusError>> {
        let r = if summary.len() > MAX_SUMMARY_BYTES {
            Err(BusError::Unavailable("the summary is over its size".into()))
        } else {
            let until = tokio::time::Instant::now() + ttl;
            *self.last.lock() = Some((node.to_owned(), summary, until));
            Ok(())
        };
        Box::pin(std::future::ready(r))
    }

    fn summaries(&self) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, BusError>> {
        let now = tokio::time::Instant::now();
        let last = self.last.lock().clone();
        let out = last
            .filter(|(_, _, until)| *until > now)
            .map(|(node, s, _)| vec![(node, s)])
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_node_sees_its_own_summary_until_it_is_forgotten() {
        let s = LocalSummaries::default();
        assert!(s.summaries().await.unwrap().is_empty());
        let ttl = Duration::from_secs(5);
        s.share_summary("n1", Bytes::from_static(b"{}"), ttl)
            .await
            .unwrap();
        assert_eq!(
            s.summaries().await.unwrap(),
            vec![("n1".to_owned(), Bytes::from_static(b"{}"))]
        );
        let big = Bytes::from(vec![b' '; MAX_SUMMARY_BYTES + 1]);
        assert!(s.share_summary("n1", big, ttl).await.is_err());
        // A summary past its lifetime is forgotten.
        s.share_summary("n1", Bytes::from_static(b"{}"), Duration::ZERO)
            .await
            .unwrap();
        assert!(s.summaries().await.unwrap().is_empty());
    }
}
