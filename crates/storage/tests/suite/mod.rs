//! The checks every object store must pass.

use std::time::Duration;

use bytes::Bytes;
use ferry_storage::{LIST_PAGE, ObjectMeta, ObjectStore, StorageError, content_md5, get_bytes};
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;

async fn read_all(mut body: ferry_storage::Body) -> Vec<u8> {
    let mut out = Vec::new();
    body.read_to_end(&mut out).await.unwrap();
    out
}

/// Runs every check. `verifies_md5` says whether the server checks Content-MD5
/// (AWS, Garage, MinIO, B2, R2 and the local store do; moto, a test double, does
/// not, so there a damaged body is accepted and only Ferry's SHA-256 catches it).
/// `ordered_listing`: whether the store lists in key order (S3 does).
pub async fn conformance(store: &dyn ObjectStore, verifies_md5: bool, ordered_listing: bool) {
    // Round trip of a streamed object larger than one streaming part (8 MiB), so
    // S3 stores take the multipart path of `put`.
    let big: Vec<u8> = (0..9 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
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

    // Ranged reads: inside, at the end, past the end, empty.
    let r = read_all(store.get_range("objects/big", 1000..1010).await.unwrap()).await;
    assert_eq!(r, big[1000..1010]);
    let n = big.len() as u64;
    let r = read_all(
        store
            .get_range("objects/big", n - 5..n + 100)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r, big[big.len() - 5..]);
    assert!(
        read_all(store.get_range("objects/big", 10..10).await.unwrap())
            .await
            .is_empty()
    );

    // Explicit multipart: parts uploaded out of order, completed in order; nothing
    // visible before completion; listed while pending; abort drops it.
    let part = 5 * 1024 * 1024;
    let data: Vec<u8> = (0..(2 * part + 1234) as u32)
        .map(|i| (i % 241) as u8)
        .collect();
    let id = store.create_multipart("objects/multi").await.unwrap();
    let pending = store.list_multipart("objects/mul").await.unwrap();
    assert!(
        pending
            .iter()
            .any(|p| p.upload_id == id && p.key == "objects/multi")
    );
    let mut receipts = Vec::new();
    for (i, chunk) in data.chunks(part).enumerate().rev() {
        receipts.push(
            store
                .upload_part(
                    "objects/multi",
                    &id,
                    i as u32 + 1,
                    Bytes::copy_from_slice(chunk),
                )
                .await
                .unwrap(),
        );
    }
    assert!(store.head("objects/multi").await.unwrap().is_none());
    store
        .complete_multipart("objects/multi", &id, &receipts)
        .await
        .unwrap();
    assert_eq!(get_bytes(store, "objects/multi").await.unwrap(), data);
    assert!(
        !store
            .list_multipart("objects/")
            .await
            .unwrap()
            .iter()
            .any(|p| p.upload_id == id)
    );
    let id = store.create_multipart("objects/dropped").await.unwrap();
    store
        .upload_part("objects/dropped", &id, 1, Bytes::from(vec![7u8; 1024]))
        .await
        .unwrap();
    store.abort_multipart("objects/dropped", &id).await.unwrap();
    assert!(store.head("objects/dropped").await.unwrap().is_none());
    assert!(
        store
            .list_multipart("objects/dropped")
            .await
            .unwrap()
            .is_empty()
    );

    // Checksums: a body that does not match its Content-MD5 is refused for good
    // and not stored.
    store
        .put_bytes(
            "objects/small",
            Bytes::from_static(b"hello"),
            Some(content_md5(b"hello")),
        )
        .await
        .unwrap();
    assert_eq!(get_bytes(store, "objects/small").await.unwrap(), b"hello");
    let corrupt = store
        .put_bytes(
            "objects/corrupt",
            Bytes::from_static(b"hellO"),
            Some(content_md5(b"hello")),
        )
        .await;
    if verifies_md5 {
        let err = corrupt.unwrap_err();
        assert!(!err.is_retryable(), "a bad digest is permanent: {err}");
        assert!(store.head("objects/corrupt").await.unwrap().is_none());
    } else {
        assert!(corrupt.is_ok(), "this server does not check Content-MD5");
    }

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

    // Listing: by prefix, past 1,000 keys (S3 pages at 1,000), in pages of at most
    // LIST_PAGE, every key once, nothing outside the prefix. S3 stores list in key
    // order; the directory store in the file system's order.
    let keys: Vec<String> = (0..2100).map(|i| format!("many/{i:05}")).collect();
    futures::stream::iter(keys.clone())
        .map(|key| async move {
            store
                .put_bytes(&key, Bytes::from_static(b"1"), None)
                .await
                .unwrap()
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let pages: Vec<Vec<ObjectMeta>> = store.list("many/").try_collect().await.unwrap();
    assert!(pages.len() >= 3, "2,100 keys come in several pages");
    assert!(
        pages.iter().all(|p| !p.is_empty() && p.len() <= LIST_PAGE),
        "{:?}",
        pages.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let listed: Vec<String> = pages.into_iter().flatten().map(|m| m.key).collect();
    if ordered_listing {
        assert!(listed.windows(2).all(|w| w[0] < w[1]), "in key order");
    }
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, keys, "every key exactly once");
    let some = listing(store, "many/0001").await;
    assert_eq!(some.len(), 10, "a prefix inside a name");
    assert_eq!(
        listing(store, "backups/").await,
        ["backups/s/1.json", "backups/s/2.json"]
    );
    assert!(listing(store, "nothing-here/").await.is_empty());

    // Delete one, delete many (more than one DeleteObjects request's 1,000).
    store.delete("backups/s/1.json").await.unwrap();
    assert!(store.head("backups/s/1.json").await.unwrap().is_none());
    let mut doomed = keys.clone();
    doomed.push("many/never-existed".into());
    store.delete_many(&doomed).await.unwrap();
    assert!(listing(store, "many/").await.is_empty());

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

/// The keys under `prefix`, sorted.
async fn listing(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = store
        .list(prefix)
        .map_ok(|page| page.into_iter().map(|m| m.key).collect::<Vec<_>>())
        .try_concat()
        .await
        .unwrap();
    keys.sort();
    keys
}
