//! The opaque `next_token` of task lists: base64 of the last row's position.

use base64::{
    alphabet,
    engine::{general_purpose::URL_SAFE_NO_PAD, DecodePaddingMode},
    engine::{GeneralPurpose, GeneralPurposeConfig},
    Engine,
};
use serde::{Deserialize, Serialize};

use super::{task_id::TaskId, time::Timestamp};

/// The position of a row in the list order (`created_at` desc, then `task_id` desc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub created_at: Timestamp,
    pub task_id: TaskId,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    task_id: String,
    created_at: String,
}

const LENIENT_URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const LENIENT_STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl PageToken {
    pub fn encode(&self) -> String {
        let wire = Wire {
            task_id: self.task_id.to_string(),
            created_at: self.created_at.to_iso(),
        };
        // Serializing two strings cannot fail.
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// `None` for anything this server did not produce.
    pub fn decode(token: &str) -> Option<Self> {
        let bytes = LENIENT_URL_SAFE
            .decode(token)
            .or_else(|_| LENIENT_STANDARD.decode(token))
            .ok()?;
        let wire: Wire = serde_json::from_slice(&bytes).ok()?;
        Some(PageToken {
            task_id: TaskId::parse(&wire.task_id)?,
            created_at: Timestamp::parse_filter(&wire.created_at)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let token = PageToken {
            created_at: Timestamp::from_millis(1_624_998_113_289),
            task_id: TaskId::parse("60db80e1dbdd53001146e389").unwrap(),
        };
        assert_eq!(PageToken::decode(&token.encode()), Some(token));
    }

    #[test]
    fn scale_style_standard_base64_tokens_decode() {
        let scale = "eyJ0YXNrX2lkIjoiNjBkYjgwZTFkYmRkNTMwMDExNDZlMzg5IiwiY3JlYXRlZF9hdCI6IjIwMjEtMDYtMjlUMjA6MjE6NTMuMjg5WiJ9";
        let token = PageToken::decode(scale).unwrap();
        assert_eq!(token.task_id.as_str(), "60db80e1dbdd53001146e389");
        assert_eq!(token.created_at.to_iso(), "2021-06-29T20:21:53.289Z");
    }

    #[test]
    fn garbage_tokens_are_rejected() {
        for bad in ["", "!!!", "bm90IGpzb24", "eyJ0YXNrX2lkIjoiMSJ9"] {
            assert!(PageToken::decode(bad).is_none(), "{bad} accepted");
        }
    }
}
