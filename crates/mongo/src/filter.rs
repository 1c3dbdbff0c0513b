//! Which collections a source dumps: `collections` (include) and
//! `exclude_collections`, each entry `db.collection`, `db.*` or `*.collection`.

/// Include and exclude patterns; no include pattern means every collection.
#[derive(Debug, Clone, Default)]
pub struct CollectionFilter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    db: Option<String>,
    collection: Option<String>,
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        let (db, collection) = text.split_once('.').ok_or_else(|| {
            format!("collection pattern {text:?} is not `db.collection`, `db.*` or `*.collection`")
        })?;
        if db.is_empty() || collection.is_empty() {
            return Err(format!(
                "collection pattern {text:?} has an empty database or collection part"
            ));
        }
        let part = |s: &str| (s != "*").then(|| s.to_string());
        Ok(Pattern {
            db: part(db),
            collection: part(collection),
        })
    }

    fn matches(&self, db: &str, collection: &str) -> bool {
        self.db.as_deref().is_none_or(|d| d == db)
            && self.collection.as_deref().is_none_or(|c| c == collection)
    }
}

impl CollectionFilter {
    /// Parses the source's patterns.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, String> {
        Ok(CollectionFilter {
            include: include
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<_, _>>()?,
            exclude: exclude
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether `db.collection` is dumped.
    pub fn includes(&self, db: &str, collection: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(db, collection)))
            && !self.exclude.iter().any(|p| p.matches(db, collection))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_and_exclude_patterns() {
        let f = CollectionFilter::new(&["shop.*".into(), "*.audit".into()], &["shop.tmp".into()])
            .unwrap();
        assert!(f.includes("shop", "orders"));
        assert!(f.includes("crm", "audit"));
        assert!(!f.includes("shop", "tmp"));
        assert!(!f.includes("crm", "people"));
        // A collection name may itself contain dots: only the first one splits.
        assert!(
            CollectionFilter::new(&["a.b.c".into()], &[])
                .unwrap()
                .includes("a", "b.c")
        );
        assert!(CollectionFilter::new(&["nodot".into()], &[]).is_err());
        assert!(CollectionFilter::default().includes("x", "y"));
    }
}
