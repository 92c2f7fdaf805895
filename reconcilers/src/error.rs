//! The reconcilers' error type: every variant maps to a condition reason and
//! a metric label, and says whether retrying can help.
//!
//! Database errors are classified in one place, [`classify`]: the class
//! decides the reason, whether the failure is transient and what a
//! condition may say about it.

/// Why a reconcile could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API database failed: unreachable, refused the write, lost a
    /// serialization conflict, … ([`classify`] says which).
    #[error("{class}: {0}", class = classify(.0).summary())]
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
            Self::Database(e) => classify(e).reason(),
            Self::SchemaMismatch(_) => "SchemaMismatch",
            Self::Encoding(_) => "EncodingFailed",
            Self::Secret(_) => "SecretSealFailed",
            Self::Raced(_) => "ConcurrentChange",
        }
    }

    /// Whether backing off and retrying can succeed without anyone changing
    /// the spec, the database's grants or its schema.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) => classify(e).is_transient(),
            Self::Secret(_) | Self::Raced(_) => true,
            Self::SchemaMismatch(_) | Self::Encoding(_) => false,
        }
    }

    /// The class of a database error; None for the other variants.
    pub fn database_class(&self) -> Option<DatabaseErrorClass> {
        match self {
            Self::Database(e) => Some(classify(e)),
            _ => None,
        }
    }

    /// Whether this is a serialization failure or deadlock: the transaction
    /// was rolled back and running the pass again is expected to succeed, so
    /// it is retried soon and not reported in status.
    pub fn is_serialization_failure(&self) -> bool {
        self.database_class() == Some(DatabaseErrorClass::SerializationFailure)
    }

    /// A message safe to show in a condition: no connection strings, secrets
    /// or values, bounded in length.
    pub fn public_message(&self) -> String {
        let text = match self {
            Self::Database(e) => describe_database_error(e),
            other => other.to_string(),
        };
        crate::conditions::truncate(&text, 512)
    }
}

/// What kind of failure a database error is. [`classify`] is the only place
/// that decides it; [`Error::reason`], [`Error::is_transient`] and
/// [`Error::public_message`] follow from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatabaseErrorClass {
    /// The connection was refused, lost or timed out, the server is shutting
    /// down, starting or out of resources, or a statement or lock timed out:
    /// transient, retried with back-off.
    Unavailable,
    /// The transaction lost a serialization conflict or a deadlock
    /// (40001, 40P01) and was rolled back: running it again is expected to
    /// succeed, so it is retried soon and not reported in status.
    SerializationFailure,
    /// A constraint refused the values written (class 23: unique, check,
    /// foreign key, not null, exclusion). The transaction was rolled back;
    /// retrying the same spec gives the same answer unless the spec, the
    /// conflicting row or the constraint changes.
    ConstraintViolation,
    /// The operator's database role lacks a privilege (42501).
    PermissionDenied,
    /// A table or column this build uses does not exist (42P01, 42703).
    SchemaMismatch,
    /// Anything else: a database error of another class, or a driver error
    /// that is neither a lost connection nor a timeout.
    Other,
}

impl DatabaseErrorClass {
    /// Every class, for documentation and tests.
    pub const ALL: [Self; 6] = [
        Self::Unavailable,
        Self::SerializationFailure,
        Self::ConstraintViolation,
        Self::PermissionDenied,
        Self::SchemaMismatch,
        Self::Other,
    ];

    /// The condition reason and metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unavailable => "DatabaseUnavailable",
            Self::SerializationFailure => "DatabaseSerializationFailure",
            Self::ConstraintViolation => "DatabaseConstraintViolation",
            Self::PermissionDenied => "DatabasePermissionDenied",
            // The same reason the start-up schema check gives.
            Self::SchemaMismatch => "SchemaMismatch",
            Self::Other => "DatabaseError",
        }
    }

    /// Whether retrying can succeed without anyone changing the spec, the
    /// database's grants or its schema.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Unavailable | Self::SerializationFailure)
    }

    /// A few words for logs and the error's Display.
    fn summary(self) -> &'static str {
        match self {
            Self::Unavailable => "database unavailable",
            Self::SerializationFailure => "database serialization failure",
            Self::ConstraintViolation => "database constraint violation",
            Self::PermissionDenied => "database permission denied",
            Self::SchemaMismatch => "database schema mismatch",
            Self::Other => "database error",
        }
    }
}

/// Classifies a database error. Pure: it looks only at the error's variant
/// and, for errors the server returned, its SQLSTATE.
pub fn classify(e: &sqlx::Error) -> DatabaseErrorClass {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => DatabaseErrorClass::Unavailable,
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => classify_sqlstate(&code),
            None => DatabaseErrorClass::Other,
        },
        _ => DatabaseErrorClass::Other,
    }
}

/// Classifies a SQLSTATE (<https://www.postgresql.org/docs/current/errcodes-appendix.html>).
pub fn classify_sqlstate(code: &str) -> DatabaseErrorClass {
    use DatabaseErrorClass::*;
    match code {
        "40001" | "40P01" => SerializationFailure,
        "42501" => PermissionDenied,
        "42P01" | "42703" => SchemaMismatch,
        // admin_shutdown (also pg_terminate_backend), crash_shutdown,
        // cannot_connect_now (starting up), idle_session_timeout.
        "57P01" | "57P02" | "57P03" | "57P05" => Unavailable,
        // query_canceled: statement_timeout (or a cancel request).
        "57014" => Unavailable,
        // lock_not_available: lock_timeout.
        "55P03" => Unavailable,
        // The server closed the session for an idle transaction or a
        // transaction_timeout.
        "25P03" | "25P04" => Unavailable,
        _ => match code.get(..2) {
            // Connection exception.
            Some("08") => Unavailable,
            // Insufficient resources: too_many_connections, out_of_memory, disk_full, …
            Some("53") => Unavailable,
            // Integrity constraint violation.
            Some("23") => ConstraintViolation,
            _ => Other,
        },
    }
}

/// The condition name of the SQLSTATEs a message mentions.
fn sqlstate_name(code: &str) -> Option<&'static str> {
    Some(match code {
        "08000" => "connection_exception",
        "08003" => "connection_does_not_exist",
        "08006" => "connection_failure",
        "08001" => "sqlclient_unable_to_establish_sqlconnection",
        "08004" => "sqlserver_rejected_establishment_of_sqlconnection",
        "08P01" => "protocol_violation",
        "23000" => "integrity_constraint_violation",
        "23001" => "restrict_violation",
        "23502" => "not_null_violation",
        "23503" => "foreign_key_violation",
        "23505" => "unique_violation",
        "23514" => "check_violation",
        "23P01" => "exclusion_violation",
        "25P03" => "idle_in_transaction_session_timeout",
        "25P04" => "transaction_timeout",
        "40001" => "serialization_failure",
        "40P01" => "deadlock_detected",
        "42501" => "insufficient_privilege",
        "42P01" => "undefined_table",
        "42703" => "undefined_column",
        "53000" => "insufficient_resources",
        "53100" => "disk_full",
        "53200" => "out_of_memory",
        "53300" => "too_many_connections",
        "53400" => "configuration_limit_exceeded",
        "55P03" => "lock_not_available",
        "57014" => "query_canceled",
        "57P01" => "admin_shutdown",
        "57P02" => "crash_shutdown",
        "57P03" => "cannot_connect_now",
        "57P05" => "idle_session_timeout",
        _ => return None,
    })
}

/// `SQLSTATE 23514 check_violation`, or `SQLSTATE XX000` for codes without a name here.
fn sqlstate(code: &str) -> String {
    match sqlstate_name(code) {
        Some(name) => format!("SQLSTATE {code} {name}"),
        None => format!("SQLSTATE {code}"),
    }
}

/// Whether a name the server reported (a constraint, a table) can be shown
/// as it is: an SQL identifier, possibly schema-qualified, never a value.
fn identifier(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$');
    ok.then_some(name)
}

/// The object of PostgreSQL's "permission denied for table tenants" (or
/// sequence, schema, function, …), as `table tenants`; None when the
/// message is worded otherwise (another language, a custom error).
fn denied_object(message: &str) -> Option<String> {
    let rest = message.strip_prefix("permission denied for ")?;
    let (what, name) = rest.rsplit_once(' ')?;
    let what_ok = !what.is_empty() && what.chars().all(|c| c.is_ascii_lowercase() || c == ' ');
    let name = identifier(name)?;
    (what_ok && what.len() <= 24).then(|| format!("{what} {name}"))
}

/// Describes a database error for a condition: what happened and what to
/// do, naming constraints, tables and SQLSTATEs but never values (the
/// server's message and detail can quote them) or connection details.
fn describe_database_error(e: &sqlx::Error) -> String {
    let class = classify(e);
    let db = e.as_database_error();
    let code = db.and_then(|d| d.code()).map(|c| c.into_owned());
    let state = code.as_deref().map(sqlstate);
    let table = db.and_then(|d| d.table()).and_then(identifier);
    match class {
        DatabaseErrorClass::Unavailable => {
            let what = match e {
                sqlx::Error::Io(io) => format!("I/O error ({})", io.kind()),
                sqlx::Error::PoolTimedOut => "timed out waiting for a connection".into(),
                sqlx::Error::PoolClosed => "connection pool closed".into(),
                sqlx::Error::Tls(_) => "TLS error".into(),
                sqlx::Error::Protocol(_) => "unexpected data on the connection".into(),
                sqlx::Error::WorkerCrashed => "the connection's background worker crashed".into(),
                _ => state.clone().unwrap_or_else(|| "database error".into()),
            };
            format!("the API database is unavailable ({what}); retrying with back-off")
        }
        DatabaseErrorClass::SerializationFailure => format!(
            "the API database rolled the transaction back ({}); retrying",
            state.as_deref().unwrap_or("serialization failure")
        ),
        DatabaseErrorClass::ConstraintViolation => {
            let constraint = match db.and_then(|d| d.constraint()).and_then(identifier) {
                Some(name) => format!("constraint {name:?}"),
                None => "a constraint".into(),
            };
            let on = table.map(|t| format!(" on table {t:?}")).unwrap_or_default();
            format!(
                "the API database refused the write: {constraint}{on} was violated ({}); the transaction was \
                 rolled back and nothing was written. Change the spec, or the row or constraint it conflicts \
                 with; the operator retries with back-off",
                state.as_deref().unwrap_or("integrity constraint violation")
            )
        }
        DatabaseErrorClass::PermissionDenied => {
            let object = db
                .and_then(|d| denied_object(d.message()))
                .map(|o| format!("permission denied for {o}; "))
                .unwrap_or_default();
            format!(
                "the operator's database role lacks a privilege ({object}{}); nothing was written. Check that \
                 its login role is in countersign_runtime and holds the migrations' grants: run `countersign \
                 migrate` as the schema owner, and restore any grant revoked since. The operator retries with \
                 back-off",
                state.as_deref().unwrap_or("insufficient_privilege")
            )
        }
        DatabaseErrorClass::SchemaMismatch => {
            let on = table.map(|t| format!(", table {t:?}")).unwrap_or_default();
            format!(
                "the API database schema does not match this build: a table or column it uses is missing ({}{on}); \
                 run `countersign migrate`, or an operator build that matches the schema",
                state.as_deref().unwrap_or("undefined object")
            )
        }
        DatabaseErrorClass::Other => {
            let what = match e {
                sqlx::Error::Database(_) => state.unwrap_or_else(|| "an error without SQLSTATE".into()),
                sqlx::Error::RowNotFound => "a row it expected was not there".into(),
                sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => "a value could not be decoded".into(),
                sqlx::Error::Encode(_) => "a value could not be encoded".into(),
                sqlx::Error::Configuration(_) => "the connection settings are invalid".into(),
                _ => "an unexpected driver error".into(),
            };
            format!("the API database failed unexpectedly ({what}); the operator retries with back-off")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// A database error as the server would return it, with only the fields
    /// the classifier and the messages read.
    #[derive(Debug)]
    struct Fake {
        code: Option<&'static str>,
        message: &'static str,
        constraint: Option<&'static str>,
        table: Option<&'static str>,
    }

    impl std::fmt::Display for Fake {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.message)
        }
    }

    impl std::error::Error for Fake {}

    impl sqlx::error::DatabaseError for Fake {
        fn message(&self) -> &str {
            self.message
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            self.code.map(Cow::Borrowed)
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn constraint(&self) -> Option<&str> {
            self.constraint
        }
        fn table(&self) -> Option<&str> {
            self.table
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn server(code: &'static str) -> sqlx::Error {
        server_error(Fake {
            code: Some(code),
            message: "some message",
            constraint: None,
            table: None,
        })
    }

    fn server_error(fake: Fake) -> sqlx::Error {
        sqlx::Error::Database(Box::new(fake))
    }

    fn io(kind: std::io::ErrorKind) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(kind, "postgres://user:hunter2@db/platform"))
    }

    use DatabaseErrorClass::*;

    #[test]
    fn lost_connections_and_timeouts_are_unavailable() {
        let driver = [
            io(std::io::ErrorKind::ConnectionRefused),
            io(std::io::ErrorKind::UnexpectedEof),
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Tls("handshake failed".into()),
            sqlx::Error::Protocol("unexpected message".into()),
            sqlx::Error::WorkerCrashed,
        ];
        for e in &driver {
            assert_eq!(classify(e), Unavailable, "{e:?}");
        }
        let codes = [
            "08000", "08003", "08006", "08001", "08004", "08P01", "57P01", "57P02", "57P03", "57P05", "57014", "53000",
            "53100", "53200", "53300", "53400", "55P03", "25P03", "25P04",
        ];
        for code in codes {
            assert_eq!(classify(&server(code)), Unavailable, "{code}");
        }
    }

    #[test]
    fn constraint_violations_are_their_own_class() {
        for code in ["23000", "23001", "23502", "23503", "23505", "23514", "23P01"] {
            assert_eq!(classify(&server(code)), ConstraintViolation, "{code}");
        }
    }

    #[test]
    fn serialization_failures_and_deadlocks_are_their_own_class() {
        for code in ["40001", "40P01"] {
            assert_eq!(classify(&server(code)), SerializationFailure, "{code}");
        }
        // Other rollbacks of class 40 are not known to succeed on a rerun.
        assert_eq!(classify(&server("40002")), Other);
        assert_eq!(classify(&server("40003")), Other);
    }

    #[test]
    fn permission_and_schema_errors_are_their_own_classes() {
        assert_eq!(classify(&server("42501")), PermissionDenied);
        assert_eq!(classify(&server("42P01")), SchemaMismatch);
        assert_eq!(classify(&server("42703")), SchemaMismatch);
    }

    #[test]
    fn everything_else_is_a_generic_database_error() {
        for code in [
            "42601", "42883", "22001", "22P02", "XX000", "P0001", "57P04", "58030", "0A000", "",
        ] {
            assert_eq!(classify(&server(code)), Other, "{code:?}");
        }
        let without_code = server_error(Fake {
            code: None,
            message: "m",
            constraint: None,
            table: None,
        });
        assert_eq!(classify(&without_code), Other);
        for e in [
            sqlx::Error::RowNotFound,
            sqlx::Error::ColumnNotFound("id".into()),
            sqlx::Error::Decode("bad".into()),
            sqlx::Error::Configuration("bad url".into()),
            sqlx::Error::TypeNotFound { type_name: "x".into() },
            sqlx::Error::BeginFailed,
        ] {
            assert_eq!(classify(&e), Other, "{e:?}");
        }
    }

    #[test]
    fn reasons_are_distinct_and_transience_follows_the_class() {
        let reasons: std::collections::BTreeSet<_> = DatabaseErrorClass::ALL.iter().map(|c| c.reason()).collect();
        assert_eq!(reasons.len(), DatabaseErrorClass::ALL.len());
        let transient: Vec<_> = DatabaseErrorClass::ALL
            .into_iter()
            .filter(|c| c.is_transient())
            .collect();
        assert_eq!(transient, [Unavailable, SerializationFailure]);
        let cases = [
            (io(std::io::ErrorKind::ConnectionReset), "DatabaseUnavailable", true),
            (server("40001"), "DatabaseSerializationFailure", true),
            (server("40P01"), "DatabaseSerializationFailure", true),
            (server("23505"), "DatabaseConstraintViolation", false),
            (server("42501"), "DatabasePermissionDenied", false),
            (server("42P01"), "SchemaMismatch", false),
            (server("22001"), "DatabaseError", false),
            (sqlx::Error::RowNotFound, "DatabaseError", false),
        ];
        for (e, reason, transient) in cases {
            let err = Error::from(e);
            assert_eq!((err.reason(), err.is_transient()), (reason, transient), "{err:?}");
            assert_eq!(err.is_serialization_failure(), reason == "DatabaseSerializationFailure");
        }
        assert_eq!(Error::SchemaMismatch("x".into()).reason(), "SchemaMismatch");
        assert!(!Error::SchemaMismatch("x".into()).is_transient());
        assert_eq!(Error::SchemaMismatch("x".into()).database_class(), None);
    }

    #[test]
    fn a_constraint_violation_names_the_constraint_and_sqlstate_but_no_value() {
        let err = Error::from(server_error(Fake {
            code: Some("23514"),
            message: "new row for relation \"tenants\" violates check constraint \"no_forbidden\"",
            constraint: Some("no_forbidden"),
            table: Some("tenants"),
        }));
        let msg = err.public_message();
        assert!(msg.contains("constraint \"no_forbidden\""), "{msg}");
        assert!(msg.contains("table \"tenants\""), "{msg}");
        assert!(msg.contains("SQLSTATE 23514 check_violation"), "{msg}");
        // A unique violation's message quotes the key's value in its detail;
        // an odd constraint name is not echoed either.
        let err = Error::from(server_error(Fake {
            code: Some("23505"),
            message: "duplicate key value violates unique constraint \"x\"",
            constraint: Some("weird name'); DROP"),
            table: None,
        }));
        let msg = err.public_message();
        assert!(
            msg.contains("a constraint was violated (SQLSTATE 23505 unique_violation)"),
            "{msg}"
        );
        assert!(!msg.contains("DROP") && !msg.contains("duplicate key"), "{msg}");
    }

    #[test]
    fn a_permission_error_says_what_to_do() {
        let err = Error::from(server_error(Fake {
            code: Some("42501"),
            message: "permission denied for table tenants",
            constraint: None,
            table: None,
        }));
        let msg = err.public_message();
        assert!(msg.contains("database role lacks a privilege"), "{msg}");
        assert!(msg.contains("permission denied for table tenants"), "{msg}");
        assert!(msg.contains("SQLSTATE 42501 insufficient_privilege"), "{msg}");
        assert!(msg.contains("countersign migrate"), "{msg}");
        // A message worded otherwise is not echoed.
        let err = Error::from(server_error(Fake {
            code: Some("42501"),
            message: "keine Berechtigung für Tabelle tenants",
            constraint: None,
            table: None,
        }));
        assert!(!err.public_message().contains("Berechtigung"));
        assert_eq!(
            denied_object("permission denied for schema public").as_deref(),
            Some("schema public")
        );
        assert_eq!(denied_object("permission denied for table a b'c"), None);
    }

    #[test]
    fn messages_never_echo_connection_details_or_server_text() {
        let secret = "postgres://user:hunter2@db/platform";
        let mut errors = vec![
            io(std::io::ErrorKind::ConnectionRefused),
            sqlx::Error::Tls(secret.into()),
            sqlx::Error::Protocol(secret.into()),
            sqlx::Error::Configuration(secret.into()),
            sqlx::Error::Decode(secret.into()),
        ];
        for code in ["08006", "40001", "23505", "42501", "42P01", "XX000"] {
            errors.push(server_error(Fake {
                code: Some(code),
                message: "postgres://user:hunter2@db/platform",
                constraint: None,
                table: None,
            }));
        }
        for e in errors {
            let class = classify(&e);
            let msg = Error::from(e).public_message();
            assert!(!msg.contains("hunter2"), "{msg}");
            assert!(msg.contains("database"), "{class:?}: {msg}");
        }
        let unavailable = Error::from(server("57P01")).public_message();
        assert!(unavailable.contains("SQLSTATE 57P01 admin_shutdown"), "{unavailable}");
        let other = Error::from(server("XX000")).public_message();
        assert!(other.contains("SQLSTATE XX000"), "{other}");
    }
}
