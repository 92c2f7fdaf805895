//! Writes an IdentityProvider plan in one transaction: the sealed secret,
//! the row, ownership, the carried-out approval and the audit entry.

use super::KIND;
use super::plan::{ACTIVE, Write};
use super::validate::Protocol;
use crate::db;
use crate::secrets::{self, Sealed};
use sqlx::PgPool;
use uuid::Uuid;

pub use crate::record::Attribution;

/// The flat column values of a write.
struct Columns<'a> {
    protocol: &'static str,
    issuer_url: Option<&'a str>,
    client_id: Option<&'a str>,
    scopes: Vec<String>,
    subject_claim: &'a str,
    email_claim: &'a str,
    display_name_claim: &'a str,
    groups_claim_path: &'a str,
    groups_claim_format: &'a str,
    fetch_userinfo: bool,
    allowed_email_domains: Vec<String>,
    iat_window_seconds: i32,
    jwks_cache_ttl_seconds: i32,
    metadata_url: Option<&'a str>,
    entity_id: Option<&'a str>,
    sso_url: Option<&'a str>,
}

fn columns(w: &Write) -> Columns<'_> {
    match &w.values.idp.protocol {
        Protocol::Oidc(o) => Columns {
            protocol: "OIDC",
            issuer_url: Some(&o.issuer_url),
            client_id: Some(&o.client_id),
            scopes: o.scopes.clone(),
            subject_claim: &o.subject_claim,
            email_claim: &o.email_claim,
            display_name_claim: &o.display_name_claim,
            groups_claim_path: &o.groups_claim_path,
            groups_claim_format: &o.groups_claim_format,
            fetch_userinfo: o.fetch_userinfo,
            allowed_email_domains: o.allowed_email_domains.clone(),
            iat_window_seconds: o.iat_window_seconds,
            jwks_cache_ttl_seconds: o.jwks_cache_ttl_seconds,
            metadata_url: None,
            entity_id: None,
            sso_url: None,
        },
        Protocol::Saml(s) => Columns {
            protocol: "SAML",
            issuer_url: None,
            client_id: None,
            scopes: vec![],
            subject_claim: "sub",
            email_claim: "email",
            display_name_claim: "name",
            groups_claim_path: "groups",
            groups_claim_format: "string_array",
            fetch_userinfo: false,
            allowed_email_domains: vec![],
            iat_window_seconds: 300,
            jwks_cache_ttl_seconds: 3600,
            metadata_url: Some(&s.metadata_url),
            entity_id: Some(&s.entity_id),
            sso_url: Some(&s.sso_url),
        },
    }
}

/// Executes a write with the row `status` (ACTIVE, or PENDING_APPROVAL while
/// a create waits for its second person). `sealed` is the new client secret
/// when the write rotates it. Returns the row id.
pub async fn write(
    pool: &PgPool,
    w: &Write,
    status: &str,
    sealed: Option<&Sealed>,
    who: &Attribution,
) -> Result<Uuid, crate::Error> {
    let mut tx = pool.begin().await?;
    crate::tenancy::hold_admitting(&mut tx, w.values.tenant_id, &who.namespace).await?;
    let c = columns(w);
    let is_saml = c.protocol == "SAML";
    let old_secret: Option<Uuid> = match w.row_id {
        Some(id) => sqlx::query_scalar("SELECT client_secret_ref FROM identity_providers WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .flatten(),
        None => None,
    };
    if let Some(s) = sealed {
        secrets::store(&mut tx, s).await?;
    }
    let replaced = sealed.is_some() || is_saml;
    if replaced && let Some(old) = old_secret {
        secrets::revoke(&mut tx, old).await?;
    }
    let secret_ref: Option<Uuid> = if is_saml {
        None
    } else {
        sealed.map(|s| s.id).or(old_secret)
    };
    let approver = who.approval.as_ref().map(|a| a.approver.as_str());
    // A configuration change restarts the approval record: the previous
    // approver approved something else.
    let restamp = w.cause.changes_configuration();
    let row_id = match w.row_id {
        None => {
            // The object may still own a row that vanished behind its back.
            sqlx::query("DELETE FROM managed_objects WHERE kind = $1 AND object_uid = $2")
                .bind(KIND)
                .bind(&who.uid)
                .execute(&mut *tx)
                .await?;
            sqlx::query_scalar(
                "INSERT INTO identity_providers (tenant_id, name, protocol, status, enabled, issuer_url, client_id,
                        client_secret_ref, scopes, subject_claim, email_claim, display_name_claim, groups_claim_path,
                        groups_claim_format, fetch_userinfo, allowed_email_domains, iat_window_seconds,
                        jwks_cache_ttl_seconds, metadata_url, entity_id, sso_url, requested_by, requested_at,
                        approved_by, approved_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21,
                         $22, now(), $23, CASE WHEN $23::text IS NULL THEN NULL ELSE now() END)
                 RETURNING id",
            )
            .bind(w.values.tenant_id)
            .bind(&w.values.idp.name)
            .bind(c.protocol)
            .bind(status)
            .bind(w.values.idp.enabled)
            .bind(c.issuer_url)
            .bind(c.client_id)
            .bind(secret_ref)
            .bind(&c.scopes)
            .bind(c.subject_claim)
            .bind(c.email_claim)
            .bind(c.display_name_claim)
            .bind(c.groups_claim_path)
            .bind(c.groups_claim_format)
            .bind(c.fetch_userinfo)
            .bind(&c.allowed_email_domains)
            .bind(c.iat_window_seconds)
            .bind(c.jwks_cache_ttl_seconds)
            .bind(c.metadata_url)
            .bind(c.entity_id)
            .bind(c.sso_url)
            .bind(&who.requester)
            .bind(approver)
            .fetch_one(&mut *tx)
            .await?
        }
        Some(id) => {
            sqlx::query_scalar(
                "UPDATE identity_providers SET tenant_id = $1, name = $2, protocol = $3, status = $4, enabled = $5,
                        issuer_url = $6, client_id = $7, client_secret_ref = $8, scopes = $9, subject_claim = $10,
                        email_claim = $11, display_name_claim = $12, groups_claim_path = $13,
                        groups_claim_format = $14, fetch_userinfo = $15, allowed_email_domains = $16,
                        iat_window_seconds = $17, jwks_cache_ttl_seconds = $18, metadata_url = $19, entity_id = $20,
                        sso_url = $21,
                        requested_by = CASE WHEN $24 THEN $22 ELSE requested_by END,
                        requested_at = CASE WHEN $24 THEN now() ELSE requested_at END,
                        approved_by = CASE WHEN $24 THEN $23 ELSE approved_by END,
                        approved_at = CASE WHEN $24 THEN (CASE WHEN $23::text IS NULL THEN NULL ELSE now() END)
                                           ELSE approved_at END,
                        updated_at = now()
                  WHERE id = $25 AND deleted_at IS NULL RETURNING id",
            )
            .bind(w.values.tenant_id)
            .bind(&w.values.idp.name)
            .bind(c.protocol)
            .bind(status)
            .bind(w.values.idp.enabled)
            .bind(c.issuer_url)
            .bind(c.client_id)
            .bind(secret_ref)
            .bind(&c.scopes)
            .bind(c.subject_claim)
            .bind(c.email_claim)
            .bind(c.display_name_claim)
            .bind(c.groups_claim_path)
            .bind(c.groups_claim_format)
            .bind(c.fetch_userinfo)
            .bind(&c.allowed_email_domains)
            .bind(c.iat_window_seconds)
            .bind(c.jwks_cache_ttl_seconds)
            .bind(c.metadata_url)
            .bind(c.entity_id)
            .bind(c.sso_url)
            .bind(&who.requester)
            .bind(approver)
            .bind(restamp)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    let owner = who.ownership(row_id);
    db::record_ownership(&mut tx, KIND, &owner, w.cause == super::plan::Cause::Adopted).await?;
    let action = if status == ACTIVE { w.cause.action() } else { "request" };
    let mut detail = serde_json::json!({ "status": status });
    if let Some(s) = sealed {
        // The fingerprint, never the secret: enough to tell rotations apart.
        detail["secret_fingerprint"] = serde_json::Value::String(s.fingerprint.clone());
    }
    who.audit(&mut tx, KIND, action, row_id, &who.digest, detail).await?;
    tx.commit().await?;
    Ok(row_id)
}

/// What deleting the provider found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The row was removed (or released, or there was none).
    Done,
    /// Live group mappings still reference the row and the policy is not Cascade.
    InUse(i64),
}

/// How a deletion treats the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalMode {
    /// Soft-delete; refused while mappings reference the provider.
    Delete,
    /// Soft-delete the provider and its mappings.
    Cascade,
    /// Release ownership and leave the row.
    Orphan,
}

/// Removes (or releases) the row this object manages, in one transaction
/// with its audit entry. Rows it does not manage are never touched.
pub async fn remove(pool: &PgPool, mode: RemovalMode, who: &Attribution) -> Result<Removal, crate::Error> {
    let mut tx = pool.begin().await?;
    let Some(owner) = db::owned_by_object(&mut *tx, KIND, &who.uid).await? else {
        return Ok(Removal::Done);
    };
    let mut detail = serde_json::json!({});
    match mode {
        RemovalMode::Orphan => {}
        RemovalMode::Delete | RemovalMode::Cascade => {
            // Lock the provider first so no mapping can be added between the
            // count below and the soft delete (mapping writes hold it shared).
            sqlx::query("SELECT id FROM identity_providers WHERE id = $1 FOR UPDATE")
                .bind(owner.row_id)
                .execute(&mut *tx)
                .await?;
            let in_use = super::resolve::mappings_referencing(&mut *tx, owner.row_id).await?;
            if in_use > 0 && mode == RemovalMode::Delete {
                return Ok(Removal::InUse(in_use));
            }
            if in_use > 0 {
                sqlx::query(
                    "UPDATE group_mappings SET deleted_at = now(), deleted_by = $2, updated_at = now()
                      WHERE identity_provider_id = $1 AND deleted_at IS NULL",
                )
                .bind(owner.row_id)
                .bind(&who.actor)
                .execute(&mut *tx)
                .await?;
                detail = serde_json::json!({"cascaded_group_mappings": in_use});
            }
            let secret: Option<Uuid> = sqlx::query_scalar(
                "UPDATE identity_providers SET deleted_at = now(), deleted_by = $2, updated_at = now()
                  WHERE id = $1 AND deleted_at IS NULL RETURNING client_secret_ref",
            )
            .bind(owner.row_id)
            .bind(&who.actor)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
            if let Some(secret) = secret {
                secrets::revoke(&mut tx, secret).await?;
            }
        }
    }
    db::release_ownership(&mut tx, KIND, owner.row_id).await?;
    let action = if mode == RemovalMode::Orphan {
        "orphan"
    } else {
        "delete"
    };
    who.audit(&mut tx, KIND, action, owner.row_id, &owner.digest, detail)
        .await?;
    tx.commit().await?;
    Ok(Removal::Done)
}
