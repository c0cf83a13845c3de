//! `tally-admin api-key …`.

use std::fmt::Write;

use anyhow::Context;
use clap::Subcommand;
use tally_kit::auth::{self, Scope};
use tally_schemas::TenantId;

use crate::AdminConfig;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; prints the token once (it is stored only hashed).
    Create {
        /// A tenant key: it acts for this tenant only.
        #[arg(long, required_unless_present_any = ["admin", "service", "analyst"], conflicts_with_all = ["admin", "service", "analyst"])]
        tenant: Option<String>,
        /// A service key (API gateway, Envoy, an emitter for many tenants): sends usage for and
        /// checks any tenant, reads no tenant's limits or denials.
        #[arg(long, conflicts_with_all = ["admin", "analyst"])]
        service: bool,
        /// An analyst key (analysts, finance, the console): reads every tenant's usage and
        /// limits, sends and checks nothing.
        #[arg(long, conflicts_with = "admin")]
        analyst: bool,
        /// An admin key: everything, for every tenant.
        #[arg(long)]
        admin: bool,
        /// A note saying who holds the key.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a key by its prefix (or the full token); takes effect within the auth cache TTL.
    Revoke { prefix: String },
    /// List keys, newest first.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
}

fn tenant_id(raw: &str) -> anyhow::Result<TenantId> {
    TenantId::parse(raw).map_err(|(_, message)| anyhow::anyhow!("--tenant {raw:?}: {message}"))
}

pub async fn run(config: &AdminConfig, command: KeyCommand) -> anyhow::Result<String> {
    let pool = tally_kit::postgres::pool(&config.postgres)?;
    let mut report = String::new();
    match command {
        KeyCommand::Create { tenant, service, analyst, admin: _, label } => {
            let tenant = tenant.as_deref().map(tenant_id).transpose()?;
            let scope = match (&tenant, service, analyst) {
                (Some(_), _, _) => Scope::Tenant,
                (None, true, _) => Scope::Service,
                (None, false, true) => Scope::Analyst,
                (None, false, false) => Scope::Admin,
            };
            let key = auth::create_key(&pool, scope, tenant.as_ref(), &label).await.context("creating the key")?;
            let scope = match (scope, tenant) {
                (Scope::Tenant, Some(t)) => format!("tenant {t}"),
                (Scope::Service, _) => "service (checks and usage of any tenant)".to_owned(),
                (Scope::Analyst, _) => "analyst (reads any tenant's usage and limits)".to_owned(),
                _ => "admin (any tenant)".to_owned(),
            };
            writeln!(report, "created key {} for {scope}; the token is shown only now:", key.prefix)?;
            writeln!(report, "{}", key.token)?;
        }
        KeyCommand::Revoke { prefix } => {
            if !auth::revoke_key(&pool, &prefix).await.context("revoking the key")? {
                anyhow::bail!("no active key with prefix {prefix:?}");
            }
            writeln!(report, "revoked key {prefix}")?;
        }
        KeyCommand::List { tenant } => {
            let tenant = tenant.as_deref().map(tenant_id).transpose()?;
            for key in auth::list_keys(&pool, tenant.as_ref()).await.context("listing keys")? {
                let state = key.revoked_at.map_or_else(|| "active".to_owned(), |at| format!("revoked {at}"));
                let scope = key.tenant_id.unwrap_or_else(|| format!("({})", key.scope));
                writeln!(report, "{}  {scope:<24} {state:<32} {}  {}", key.prefix, key.created_at, key.label)?;
            }
        }
    }
    Ok(report)
}
