//! `ferry list`: backups from the manifests, newest first. Reads only the store.

use std::io::Write;
use std::process::ExitCode;

use ferry_runtime::Config;
use ferry_storage::{Catalog, Manifest, ObjectStore};
use futures::StreamExt;

use crate::output;

/// `ferry list`
#[derive(clap::Args)]
pub struct ListArgs {
    /// Only this source.
    #[arg(long)]
    pub source: Option<String>,
    /// JSON (the manifests) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `ferry list`: streams the listing, one manifest at a time.
pub async fn run(config: &Config, args: ListArgs) -> anyhow::Result<ExitCode> {
    let store = ferry_runtime::store::open(&config.storage)?;
    print(
        store.as_ref(),
        args.source.as_deref(),
        args.json,
        &mut std::io::stdout().lock(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Every backup (of one source, when given), newest first in the catalog's order
/// (the time in the backup id): the same order `--backup latest` resolves by.
/// Holds every manifest: for a test or a small fleet; `ferry list` uses [`print`].
pub async fn backups(
    store: &dyn ObjectStore,
    source: Option<&str>,
) -> anyhow::Result<Vec<Manifest>> {
    let mut out = Vec::new();
    each(store, source, |m| {
        out.push(m);
        Ok(())
    })
    .await?;
    Ok(out)
}

/// Writes every backup to `out` as it is read, newest first: a table, or the JSON
/// array of the manifests. Only one source's backup entries are held, never every
/// manifest, so listing a long history costs the memory of one manifest.
pub async fn print(
    store: &dyn ObjectStore,
    source: Option<&str>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut count = 0usize;
    if json {
        write!(out, "[")?;
    } else {
        out.write_all(output::backups_header().as_bytes())?;
    }
    each(store, source, |m| {
        if json {
            // The layout of `serde_json::to_string_pretty` on the whole array.
            let item = serde_json::to_string_pretty(&m)?;
            writeln!(out, "{}", if count == 0 { "" } else { "," })?;
            let indented: Vec<String> = item.lines().map(|l| format!("  {l}")).collect();
            write!(out, "{}", indented.join("\n"))?;
        } else {
            out.write_all(output::backup_row(&m).as_bytes())?;
        }
        count += 1;
        Ok(())
    })
    .await?;
    if json {
        writeln!(out, "{}]", if count == 0 { "" } else { "\n" })?;
    }
    out.flush()?;
    Ok(())
}

/// Calls `f` with each readable manifest, newest first.
async fn each(
    store: &dyn ObjectStore,
    source: Option<&str>,
    mut f: impl FnMut(Manifest) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let catalog = Catalog::new(store);
    let entries = catalog.backups(source).await?;
    let mut manifests = std::pin::pin!(catalog.manifests(entries));
    while let Some((entry, manifest)) = manifests.next().await {
        match manifest {
            Ok(m) => f(m)?,
            // Deleted by retention since the listing.
            Err(ferry_storage::CatalogError::NoSuchBackup { .. }) => {}
            Err(ferry_storage::CatalogError::Unreadable { key, why }) => {
                eprintln!("warning: {key}: {why}")
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "backup {} of {}: {e}",
                    entry.id,
                    entry.source
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ferry_storage::{Catalog, Compression, Engine, FsStore, Manifest, ManifestFile};

    fn manifest(id: &str) -> Manifest {
        let at = chrono::Utc::now();
        Manifest {
            format: ferry_storage::manifest::FORMAT_VERSION,
            backup_id: id.into(),
            source: "shop".into(),
            engine: Engine::Postgres,
            job_id: format!("job-{id}"),
            server_version: "15".into(),
            tool_version: "pg_dump 15".into(),
            started_at: at,
            completed_at: at,
            databases: vec!["shop".into()],
            files: vec![ManifestFile {
                name: "shop/toc.dat".into(),
                object: "objects/aa".into(),
                size: 1,
                sha256: "aa".into(),
                compression: Compression::None,
                reused: false,
                stored: None,
            }],
            bytes_total: 1,
            bytes_uploaded: 1,
            bytes_reused: 0,
            trace_id: None,
            postgres: None,
            mongodb: None,
            locked: false,
        }
    }

    #[tokio::test]
    async fn the_streamed_listing_is_what_the_whole_listing_printed() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path(), "ferry").unwrap();
        let mut out = Vec::new();
        super::print(&store, None, true, &mut out).await.unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "[]\n");
        for id in [
            "20261130T080000Z-1",
            "20261130T090000Z-2",
            "20261130T100000Z-3",
        ] {
            Catalog::new(&store).commit(&manifest(id)).await.unwrap();
        }
        let whole = super::backups(&store, Some("shop")).await.unwrap();
        assert_eq!(whole.len(), 3);
        let mut out = Vec::new();
        super::print(&store, Some("shop"), true, &mut out)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{}\n", serde_json::to_string_pretty(&whole).unwrap())
        );
        let mut out = Vec::new();
        super::print(&store, Some("shop"), false, &mut out)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            crate::output::backups_table(&whole)
        );
    }
}
