//! Helpers shared by the test files that use the etcd-client crate.

use anyhow::ensure;
use tonic::Code;

/// Checks that `result` is a gRPC error with etcd's `code` and exact `message`.
pub fn expect_error<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, etcd_client::Error>,
    code: Code,
    message: &str,
) -> anyhow::Result<()> {
    match result {
        Ok(value) => anyhow::bail!("{what}: expected {code:?} {message:?}, got success: {value:?}"),
        Err(etcd_client::Error::GRpcStatus(status)) => {
            ensure!(
                status.code() == code && status.message() == message,
                "{what}: expected {code:?} {message:?}, got {:?} {:?}",
                status.code(),
                status.message()
            );
            Ok(())
        }
        Err(other) => anyhow::bail!("{what}: expected gRPC {code:?} {message:?}, got {other}"),
    }
}
