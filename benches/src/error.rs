//! The errors that stop a run, and the names under which failed requests are counted.

use std::path::PathBuf;

use tonic::Status;

/// Why a run could not start or its results could not be written. A request that fails during
/// the run is not one of these: it is counted under its [`error_kind`] and the run goes on.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid options: {0}")]
    InvalidOptions(String),

    #[error("bad endpoint {endpoint:?}")]
    BadEndpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },

    #[error("cannot connect to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },

    /// Filling the key space before a read or update workload failed: measuring on a partly
    /// filled key space would measure something else.
    #[error("prefill failed: {0}")]
    Prefill(String),

    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot encode the report as JSON")]
    Json(#[from] serde_json::Error),

    /// A sweep's summary (`plot-sweep --summary`) that cannot be read, or has nothing to draw.
    #[error("cannot plot the summary {path}: {message}")]
    Summary { path: PathBuf, message: String },

    #[error("cannot draw {path}: {message}")]
    Plot { path: PathBuf, message: String },
}

/// The name under which a failed request is counted: its gRPC code and message, so that
/// `Unavailable: etcdserver: leader changed` and `Unavailable: etcdserver: request timed out`
/// stay apart while every repetition of one of them adds up.
pub fn error_kind(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Names the step of a multi-step request in a failure's message (`[lease grant] ...`), so that
/// its kind says which step failed: a server without a service often answers Unimplemented with
/// no message at all.
pub fn in_step(step: &'static str) -> impl Fn(Status) -> Status {
    move |status| {
        let message = format!("[{step}] {}", status.message());
        Status::new(status.code(), message.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_step_prefixes_the_message() {
        let status = in_step("lease grant")(Status::unimplemented(""));
        assert_eq!(error_kind(&status), "Unimplemented: [lease grant]");
        let status = in_step("txn")(Status::unavailable("etcdserver: leader changed"));
        assert_eq!(
            error_kind(&status),
            "Unavailable: [txn] etcdserver: leader changed"
        );
    }

    #[test]
    fn error_kind_names_code_and_message() {
        let status = Status::unavailable("etcdserver: leader changed");
        assert_eq!(
            error_kind(&status),
            "Unavailable: etcdserver: leader changed"
        );
        let status = Status::unimplemented("");
        assert_eq!(error_kind(&status), "Unimplemented: ");
    }
}
