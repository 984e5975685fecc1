//! Task ids: 24 lowercase hex digits, ObjectId-like (4 bytes of creation second, then random).

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

impl TryFrom<String> for TaskId {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        TaskId::parse(&text).ok_or_else(|| format!("malformed task id {text:?}"))
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> Self {
        id.0
    }
}

impl TaskId {
    pub fn generate(created_at: Timestamp) -> Self {
        let mut bytes = [0u8; 12];
        // The id's first four bytes are the creation second, as in a MongoDB ObjectId.
        let seconds = u32::try_from(created_at.seconds()).unwrap_or(u32::MAX);
        bytes[..4].copy_from_slice(&seconds.to_be_bytes());
        rand::rng().fill_bytes(&mut bytes[4..]);
        TaskId(hex::encode(bytes))
    }

    /// Accepts only well-formed ids; anything else can never name a task (callers answer 404).
    pub fn parse(text: &str) -> Option<Self> {
        let well_formed = text.len() == 24
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        well_formed.then(|| TaskId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_24_hex_and_start_with_the_creation_second() {
        let at = Timestamp::from_millis(1_624_439_374_752);
        let id = TaskId::generate(at);
        assert_eq!(id.as_str().len(), 24);
        assert_eq!(&id.as_str()[..8], format!("{:08x}", 1_624_439_374u32));
        assert_eq!(TaskId::parse(id.as_str()), Some(id.clone()));
        assert_ne!(TaskId::generate(at), id);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in [
            "",
            "601ba74eec471ff9b01557c",
            "601ba74eec471ff9b01557ccc",
            "601BA74EEC471FF9B01557CC",
            "zzzzzzzzzzzzzzzzzzzzzzzz",
        ] {
            assert!(TaskId::parse(bad).is_none(), "{bad} accepted");
        }
    }
}
