//! The object store conformance suite: every store implementation must pass it. The
//! local-directory store runs it here; the S3 store joins when it exists.

use std::time::Duration;

use bytes::Bytes;
use ferry_storage::{FsStore, ObjectStore, StorageError, get_bytes};

async fn conformance(store: &dyn ObjectStore) {
    // Round trip of a streamed object larger than any buffer.
    let big: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let size = store
        .put("objects/big", Box::new(std::io::Cursor::new(big.clone())))
        .await
        .unwrap();
    assert_eq!(size, big.len() as u64);
    assert_eq!(get_bytes(store, "objects/big").await.unwrap(), big);
    let meta = store
        .head("objects/big")
        .await
        .unwrap()
        .expect("head finds it");
    assert_eq!(meta.size, big.len() as u64);
    assert!(meta.modified.elapsed().unwrap_or_default() < Duration::from_secs(3600));

    // Absent objects.
    assert!(store.head("objects/absent").await.unwrap().is_none());
    assert!(matches!(
        store.get("objects/absent").await,
        Err(StorageError::NotFound { .. })
    ));
    store
        .delete("objects/absent")
        .await
        .expect("deleting an absent key is fine");

    // put replaces; put_if_absent never does.
    store
        .put(
            "backups/s/1.json",
            Box::new(std::io::Cursor::new(b"one".to_vec())),
        )
        .await
        .unwrap();
    store
        .put(
            "backups/s/1.json",
            Box::new(std::io::Cursor::new(b"two".to_vec())),
        )
        .await
        .unwrap();
    assert_eq!(get_bytes(store, "backups/s/1.json").await.unwrap(), b"two");
    assert!(
        store
            .put_if_absent("backups/s/2.json", Bytes::from_static(b"first"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_if_absent("backups/s/2.json", Bytes::from_static(b"second"))
            .await
            .unwrap()
    );
    assert_eq!(
        get_bytes(store, "backups/s/2.json").await.unwrap(),
        b"first"
    );

    // Listing: by prefix, sorted, past 1,000 keys, nothing outside the prefix.
    for i in 0..1100 {
        store
            .put(
                &format!("many/{i:05}"),
                Box::new(std::io::Cursor::new(vec![1u8])),
            )
            .await
            .unwrap();
    }
    let listed = store.list("many/").await.unwrap();
    assert_eq!(listed.len(), 1100);
    assert!(listed.windows(2).all(|w| w[0].key < w[1].key));
    assert_eq!(listed[0].key, "many/00000");
    let some = store.list("many/0001").await.unwrap();
    assert_eq!(some.len(), 10, "a prefix inside a name");
    let backups: Vec<String> = store
        .list("backups/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(backups, ["backups/s/1.json", "backups/s/2.json"]);
    assert!(store.list("nothing-here/").await.unwrap().is_empty());

    // Delete.
    store.delete("backups/s/1.json").await.unwrap();
    assert!(store.head("backups/s/1.json").await.unwrap().is_none());

    // Keys that could escape the store are refused.
    for bad in ["", "/etc/passwd", "../up", "a//b", "a/./b"] {
        let err = store
            .put(bad, Box::new(std::io::Cursor::new(vec![])))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidKey { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[tokio::test]
async fn local_directory_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path(), "ferry").unwrap();
    conformance(&store).await;
    // Temporary files never show up as objects, and none are left behind.
    assert!(
        store
            .list("")
            .await
            .unwrap()
            .iter()
            .all(|m| !m.key.starts_with(".tmp"))
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("ferry/.tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn concurrent_conditional_creates_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(FsStore::new(dir.path(), "").unwrap());
    let attempts = (0..16).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .put_if_absent("backups/x/m.json", Bytes::from(format!("writer {i}")))
                .await
                .unwrap()
        })
    });
    let wins = futures::future::join_all(attempts)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(wins, 1);
}
