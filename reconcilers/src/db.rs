//! The API database: migrations, the start-up schema check and ownership
//! records shared by every kind.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

/// The schema migrations this build carries (reconcilers/migrations).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The setting the operator's own connections carry: the schema's change
/// notifications skip writes made under it (an operator write is not drift).
pub const ORIGIN_SETTING: (&str, &str) = ("countersign.origin", "operator");

/// Opens a small pool for tools and start-up checks that fails fast when the
/// database is away (see [`operator_pool`] for the one reconciles use).
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("countersign");
    Ok(pool_options(8).connect_lazy_with(options))
}

/// The operator's own pool of `size` connections to the database `from`
/// connects to, marked with [`ORIGIN_SETTING`] so the operator does not hear
/// of its own writes. It fails fast when the database is away, so a reconcile
/// reports `DatabaseUnavailable` instead of hanging, and does not ping a
/// connection before each use (a round trip per query): a dead one fails its
/// query and the reconcile is retried on a fresh one.
pub fn operator_pool(from: &PgPool, size: u32) -> PgPool {
    let options = from.connect_options().as_ref().clone().options([ORIGIN_SETTING]);
    pool_options(size).test_before_acquire(false).connect_lazy_with(options)
}

fn pool_options(size: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(size.max(1))
        .acquire_timeout(Duration::from_secs(5))
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// The newest schema version this build knows.
pub fn latest_known_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Checks the database is at exactly the schema this build understands.
/// The error message says what is wrong and what to do.
pub async fn check_schema(pool: &PgPool) -> Result<i64, crate::Error> {
    let known = latest_known_version();
    let has_table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !has_table {
        return Err(crate::Error::SchemaMismatch(format!(
            "the API database has no Countersign schema (this build needs version {known}); run `countersign migrate`"
        )));
    }
    let rows = sqlx::query("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(pool)
        .await?;
    let mut applied = 0;
    for row in rows {
        let version: i64 = row.try_get("version")?;
        let checksum: Vec<u8> = row.try_get("checksum")?;
        let success: bool = row.try_get("success")?;
        let Some(ours) = MIGRATOR.iter().find(|m| m.version == version) else {
            return Err(crate::Error::SchemaMismatch(format!(
                "the API database is at schema version {version}, which this operator build does not know \
                 (it knows versions up to {known}); run a newer operator or restore the database"
            )));
        };
        if !success {
            return Err(crate::Error::SchemaMismatch(format!(
                "schema migration {version} did not finish; repair the database and run `countersign migrate`"
            )));
        }
        if *ours.checksum != *checksum {
            return Err(crate::Error::SchemaMismatch(format!(
                "schema migration {version} in the database differs from this build's copy"
            )));
        }
        applied = applied.max(version);
    }
    if applied < known {
        return Err(crate::Error::SchemaMismatch(format!(
            "the API database is at schema version {applied} but this build needs {known}; run `countersign migrate`"
        )));
    }
    Ok(applied)
}

/// Which Kubernetes object manages a row (table `managed_objects`).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Ownership {
    /// The managed row.
    pub row_id: Uuid,
    /// uid of the managing object.
    pub object_uid: String,
    /// Namespace of the managing object ('' when cluster-scoped).
    pub object_ns: String,
    /// Name of the managing object.
    pub object_name: String,
    /// Digest of the configuration last written.
    pub digest: String,
}

impl Ownership {
    /// namespace/name, or name for cluster-scoped objects.
    pub fn object_key(&self) -> String {
        if self.object_ns.is_empty() {
            self.object_name.clone()
        } else {
            format!("{}/{}", self.object_ns, self.object_name)
        }
    }
}

/// The ownership record in the columns `{prefix}row_id`, `{prefix}object_uid`,
/// `{prefix}object_ns`, `{prefix}object_name` and `{prefix}digest` of a row a
/// kind's one-statement observation joined `managed_objects` into (all NULL:
/// none).
pub fn ownership_in(row: &sqlx::postgres::PgRow, prefix: &str) -> Result<Option<Ownership>, sqlx::Error> {
    let column = |name: &str| format!("{prefix}{name}");
    let Some(row_id) = row.try_get::<Option<Uuid>, _>(column("row_id").as_str())? else {
        return Ok(None);
    };
    Ok(Some(Ownership {
        row_id,
        object_uid: row.try_get(column("object_uid").as_str())?,
        object_ns: row.try_get(column("object_ns").as_str())?,
        object_name: row.try_get(column("object_name").as_str())?,
        digest: row.try_get(column("digest").as_str())?,
    }))
}

/// The ownership record of a row, if any object manages it.
pub async fn owner_of_row<'e, E>(executor: E, kind: &str, row_id: Uuid) -> Result<Option<Ownership>, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query_as(
        "SELECT row_id, object_uid, object_ns, object_name, digest FROM managed_objects WHERE kind = $1 AND row_id = $2",
    )
    .bind(kind)
    .bind(row_id)
    .fetch_optional(executor)
    .await
}

/// The ownership record of an object, if it manages a row.
pub async fn owned_by_object<'e, E>(executor: E, kind: &str, uid: &str) -> Result<Option<Ownership>, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query_as(
        "SELECT row_id, object_uid, object_ns, object_name, digest FROM managed_objects WHERE kind = $1 AND object_uid = $2",
    )
    .bind(kind)
    .bind(uid)
    .fetch_optional(executor)
    .await
}

/// Records (or refreshes) that `owner` manages its row with `owner.digest`.
pub async fn record_ownership(
    tx: &mut Transaction<'_, Postgres>,
    kind: &str,
    owner: &Ownership,
    adopted: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO managed_objects (kind, row_id, object_uid, object_ns, object_name, digest, adopted)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (kind, row_id) DO UPDATE
            SET object_uid = EXCLUDED.object_uid, object_ns = EXCLUDED.object_ns,
                object_name = EXCLUDED.object_name, digest = EXCLUDED.digest,
                adopted = managed_objects.adopted OR EXCLUDED.adopted, updated_at = now()",
    )
    .bind(kind)
    .bind(owner.row_id)
    .bind(&owner.object_uid)
    .bind(&owner.object_ns)
    .bind(&owner.object_name)
    .bind(&owner.digest)
    .bind(adopted)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Releases a row: the object no longer manages it.
pub async fn release_ownership(
    tx: &mut Transaction<'_, Postgres>,
    kind: &str,
    row_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM managed_objects WHERE kind = $1 AND row_id = $2")
        .bind(kind)
        .bind(row_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
