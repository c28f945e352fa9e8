//! The gathering step shared by the [`crate::Proposer`] and the [`crate::Forwarder`]: a request
//! that waited for room takes the requests queued behind it into its batch.

use rampart_storage::Command;

/// A batch stops growing once its commands take this many bytes (one larger command still
/// goes, alone).
pub(crate) const MAX_BATCH_BYTES: u64 = 1024 * 1024;

/// A request that can go in a batch.
pub(crate) trait Batched {
    fn command(&self) -> &Command;
}

/// Makes a batch of `first` and the requests `next` yields, for as long as each `fits` with the
/// first and the batch holds fewer than `max_requests` and [`MAX_BATCH_BYTES`]. Returns the
/// batch and the request that did not fit with it, if any: it starts the next batch.
pub(crate) fn gather<T: Batched>(
    first: T,
    mut next: impl FnMut() -> Option<T>,
    fits: impl Fn(&T, &T) -> bool,
    max_requests: usize,
) -> (Vec<T>, Option<T>) {
    let mut bytes = first.command().encoded_size();
    let mut batch = vec![first];
    while batch.len() < max_requests && bytes < MAX_BATCH_BYTES {
        let Some(request) = next() else {
            break;
        };
        if !fits(&batch[0], &request) {
            return (batch, Some(request));
        }
        bytes += request.command().encoded_size();
        batch.push(request);
    }
    (batch, None)
}
