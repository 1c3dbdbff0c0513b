//! The WAL archive's index and retention over a real directory store: holes are
//! found, timelines followed through their history files, and expiry deletes only
//! what no restore from the oldest kept base backup can replay.

use bytes::Bytes;
use ferry_storage::wal::{self, Archive, DEFAULT_SEGMENT_SIZE, Lsn, segment_name};
use ferry_storage::{FsStore, ObjectStore};

const SIZE: u64 = DEFAULT_SEGMENT_SIZE;

async fn put(store: &FsStore, source: &str, tl: u32, name: &str, content: &[u8]) {
    let key = format!("wal/{source}/{tl:08X}/{name}");
    let bytes = zstd::stream::encode_all(content, 1).unwrap();
    store
        .put_bytes(&key, Bytes::from(bytes), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_archive_is_indexed_and_expired_along_timelines() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path(), "ferry").unwrap();
    // Timeline 1: segments 2..=9 without 6; timeline 2 branched at segment 8.
    for n in (2..=9).filter(|n| *n != 6) {
        put(&store, "db", 1, &segment_name(1, n, SIZE), b"wal").await;
    }
    put(
        &store,
        "db",
        1,
        &format!("{}.partial", segment_name(1, 8, SIZE)),
        b"p",
    )
    .await;
    put(
        &store,
        "db",
        2,
        "00000002.history",
        b"1\t0/8000100\tno recovery target specified\n",
    )
    .await;
    for n in 8..=10 {
        put(&store, "db", 2, &segment_name(2, n, SIZE), b"wal").await;
    }
    put(&store, "other", 1, &segment_name(1, 1, SIZE), b"wal").await;

    let archive = Archive::list(&store, "db", SIZE, None).await.unwrap();
    assert_eq!(archive.timelines.len(), 2);
    assert_eq!(archive.latest_timeline_from(1), 2);
    let path = archive.path(1, Lsn(2 * SIZE + 40), 2).unwrap();
    assert_eq!(path, vec![(1, 2, Some(8)), (2, 8, None)]);
    assert_eq!(
        archive.first_missing(&path, None),
        Some(segment_name(1, 6, SIZE)),
        "the hole on timeline 1 is on the way to timeline 2"
    );
    let from_seven = archive.path(1, Lsn(7 * SIZE), 2).unwrap();
    assert_eq!(archive.first_missing(&from_seven, None), None);
    assert_eq!(
        archive.first_missing(&from_seven, Some(12)),
        Some(segment_name(2, 11, SIZE)),
        "past the archive's end"
    );

    // The oldest kept base backup starts in segment 7 of timeline 1.
    let deleted = wal::expire(&store, "db", 1, Lsn(7 * SIZE + 100), SIZE)
        .await
        .unwrap();
    assert_eq!(deleted, 4, "segments 2, 3, 4 and 5");
    let archive = Archive::list(&store, "db", SIZE, None).await.unwrap();
    let tl1: Vec<(u64, u64)> = archive.timelines[&1].segments.ranges().collect();
    assert_eq!(tl1, vec![(7, 10)]);
    assert_eq!(archive.timelines[&1].partials, vec![8]);
    assert!(
        archive.timelines[&2].history.is_some(),
        "history files stay"
    );
    assert!(
        store
            .head(&format!("wal/other/00000001/{}", segment_name(1, 1, SIZE)))
            .await
            .unwrap()
            .is_some(),
        "another source is untouched"
    );
}
