//! Resume tokens: where a change stream stands.
//!
//! A token is opaque to clients, but capture needs to know the cluster time it
//! stands at: a stream that has been quiet still advances its post-batch token on
//! mongod, and that is how capture knows every change up to a time has been seen.
//! Two encodings are known; anything else reads as unknown, and callers fall back
//! to what the events themselves say:
//!
//! - mongod: `_data` is the hex of a KeyString whose first value is the event's
//!   cluster time: the byte `0x82` (a Timestamp) and 8 bytes big-endian, seconds
//!   then increment;
//! - SecantusDB: `_data` is the hex of a BSON document whose `t` is the cluster time.

use mongodb::bson::{self, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::change_stream::event::ResumeToken;

/// The cluster time `token` stands at, when its encoding is known.
pub fn cluster_time(token: &ResumeToken) -> Option<Timestamp> {
    let bytes = data(token)?;
    match bytes.first()? {
        0x82 if bytes.len() >= 9 => {
            let time = u32::from_be_bytes(bytes[1..5].try_into().ok()?);
            let increment = u32::from_be_bytes(bytes[5..9].try_into().ok()?);
            Some(Timestamp { time, increment })
        }
        _ => {
            let doc = Document::from_reader(bytes.as_slice()).ok()?;
            match doc.get("t")? {
                Bson::Timestamp(t) => Some(*t),
                _ => None,
            }
        }
    }
}

/// The cluster time up to which a post-batch token proves the stream has read
/// every change, when its server's tokens prove that: mongod's do (an empty
/// batch's token stands at the point up to which every change is visible).
/// SecantusDB's do not: on an empty batch it mints a token with a fresh cluster
/// time while a write with an earlier one may still be committing, so reading
/// its time as a watermark could end a capture before that write arrives.
pub fn watermark(token: &ResumeToken) -> Option<Timestamp> {
    match data(token)?.first()? {
        0x82 => cluster_time(token),
        _ => None,
    }
}

/// The token's `_data`, decoded from hex.
fn data(token: &ResumeToken) -> Option<Vec<u8>> {
    let doc = bson::to_document(token).ok()?;
    hex::decode(doc.get_str("_data").ok()?).ok()
}

/// `token` as text for a record: the hex of its BSON document.
pub fn to_hex(token: &ResumeToken) -> Option<String> {
    let raw = bson::to_raw_document_buf(token).ok()?;
    Some(hex::encode(raw.as_bytes()))
}

/// The token [`to_hex`] wrote.
pub fn from_hex(text: &str) -> Option<ResumeToken> {
    let raw = RawDocumentBuf::from_bytes(hex::decode(text).ok()?).ok()?;
    bson::from_slice(raw.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    fn token(data: &str) -> ResumeToken {
        bson::from_document(doc! { "_data": data }).unwrap()
    }

    #[test]
    fn both_known_encodings_give_their_cluster_time() {
        // mongod 7: Timestamp(1700000000, 5) then the rest of the KeyString.
        let mongod = token("826553F100000000052B022C0100296E5A1004AB");
        assert_eq!(
            cluster_time(&mongod),
            Some(Timestamp {
                time: 1_700_000_000,
                increment: 5
            })
        );
        // SecantusDB, as read off a server: {s: 102, t: Timestamp(1796286247, 105), ...}.
        let secantus = token(
            "3900000010730066000000117400690000002727116b026e000a00000073686f702e6c69766500036b000e000000105f696400010000000000",
        );
        assert_eq!(
            cluster_time(&secantus),
            Some(Timestamp {
                time: 1_796_286_247,
                increment: 105
            })
        );
        // Only mongod's is a watermark.
        assert_eq!(watermark(&mongod), cluster_time(&mongod));
        assert_eq!(watermark(&secantus), None);
        assert_eq!(cluster_time(&token("zz")), None);
        assert_eq!(cluster_time(&token("")), None);
    }

    #[test]
    fn a_token_survives_its_record() {
        let t = token("826553F100000000052B022C0100296E5A1004AB");
        assert_eq!(from_hex(&to_hex(&t).unwrap()), Some(t));
        assert_eq!(from_hex("not hex"), None);
    }
}
