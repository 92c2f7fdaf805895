//! What a test needs to prove a secret never reached the database, the
//! objects, events or logs in plaintext.

use sqlx::PgPool;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// Everything the operators of this test binary log, at debug level. Call it
/// before starting an operator so the capture is installed first.
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .try_init();
        buffer
    })
    .clone()
}

/// The captured logs as text.
pub fn logs_text() -> String {
    String::from_utf8_lossy(&captured_logs().lock().unwrap_or_else(|p| p.into_inner())).to_string()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every text the database holds, table by table, as one string, plus the
/// raw bytes of the sealed secrets (bytea prints as hex in JSON).
pub async fn database_text(pool: &PgPool) -> anyhow::Result<String> {
    let tables: Vec<String> = sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
        .fetch_all(pool)
        .await?;
    let mut all = String::new();
    for table in tables {
        // Table names come from the catalogue, not from input.
        let sql = format!("SELECT coalesce(string_agg(to_jsonb(t)::text, E'\\n'), '') FROM \"{table}\" t");
        let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await?;
        all.push_str(&text);
    }
    let blobs: Vec<Vec<u8>> = sqlx::query_scalar("SELECT ciphertext FROM encrypted_secrets")
        .fetch_all(pool)
        .await?;
    for blob in blobs {
        all.push_str(&String::from_utf8_lossy(&blob));
    }
    Ok(all)
}
