//! The reconcilers' error type: every variant maps to a condition reason and
//! a metric label, and says whether retrying can help.

/// Why a reconcile could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API database could not be reached or failed mid-transaction.
    #[error("database unavailable: {0}")]
    Database(#[from] sqlx::Error),
    /// The database schema is not the one this build understands.
    #[error("{0}")]
    SchemaMismatch(String),
    /// An object could not be encoded canonically (never expected for valid types).
    #[error("cannot encode object: {0}")]
    Encoding(#[from] serde_json::Error),
    /// Something the write depends on changed between reading and writing
    /// (e.g. the provider was deleted); the next pass sees the new state.
    #[error("{0} changed while this object was being written; retrying")]
    Raced(String),
    /// A secret could not be sealed (the system random generator failed).
    #[error("cannot seal a secret: {0}")]
    Secret(String),
}

impl Error {
    /// The CamelCase reason used in conditions and as the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Database(_) => "DatabaseUnavailable",
            Self::SchemaMismatch(_) => "SchemaMismatch",
            Self::Encoding(_) => "EncodingFailed",
            Self::Secret(_) => "SecretSealFailed",
            Self::Raced(_) => "ConcurrentChange",
        }
    }

    /// Whether backing off and retrying can succeed without a spec change.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Database(_) | Self::Secret(_) | Self::Raced(_))
    }

    /// A message safe to show in a condition: no connection strings or secrets,
    /// bounded in length.
    pub fn public_message(&self) -> String {
        let text = match self {
            Self::Database(e) => format!("the API database is unreachable or failed: {}", describe_sqlx(e)),
            other => other.to_string(),
        };
        crate::conditions::truncate(&text, 512)
    }
}

/// Describes a database error without echoing connection details.
fn describe_sqlx(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => format!("I/O error ({})", io.kind()),
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection".into(),
        sqlx::Error::PoolClosed => "connection pool closed".into(),
        sqlx::Error::Database(db) => format!("database error {}", db.code().unwrap_or_default()),
        sqlx::Error::Tls(_) => "TLS error".into(),
        _ => "unexpected database error".into(),
    }
}
