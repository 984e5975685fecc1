//! Scale's task types and the creation fields each one requires.

use serde_json::{Map, Value};

/// A field a task type cannot be created without.
#[derive(Debug, Clone, Copy)]
enum Required {
    /// A non-empty string, e.g. an attachment URL.
    Text(&'static str),
    /// A non-empty JSON array.
    List(&'static str),
    /// A non-empty JSON object, e.g. `geometries`.
    Object(&'static str),
    /// At least one of these, as a non-empty string or array.
    OneOf(&'static [&'static str]),
}

struct Rules {
    name: &'static str,
    required: &'static [Required],
    /// Scale rejects these without an instruction (unless a project supplies one).
    needs_instruction: bool,
}

const ATTACHMENT: Required = Required::Text("attachment");
const ATTACHMENTS: Required = Required::List("attachments");
const VIDEO: Required = Required::OneOf(&["attachments", "attachment"]);

use Required::{List, Object, Text};

/// Every value of the Scale Python client's `TaskType`.
static RULES: &[Rules] = &[
    rule("annotation", &[ATTACHMENT], false),
    rule("categorization", &[ATTACHMENT, List("categories")], true),
    rule("comparison", &[ATTACHMENTS], true),
    rule("cuboidannotation", &[ATTACHMENT], false),
    rule("datacollection", &[ATTACHMENT], true),
    rule("documentmodel", &[ATTACHMENT], false),
    rule("documenttranscription", &[ATTACHMENT], false),
    rule(
        "imageannotation",
        &[ATTACHMENT, Object("geometries")],
        false,
    ),
    rule("laneannotation", &[ATTACHMENT], false),
    rule("lidarannotation", &[ATTACHMENTS], false),
    rule("lidarlinking", &[ATTACHMENTS], false),
    rule("lidarsegmentation", &[ATTACHMENTS], false),
    rule("lidartopdown", &[ATTACHMENTS], false),
    rule("lineannotation", &[ATTACHMENT], false),
    rule(
        "namedentityrecognition",
        &[Text("text"), List("labels")],
        true,
    ),
    rule("pointannotation", &[ATTACHMENT], false),
    rule("polygonannotation", &[ATTACHMENT], false),
    rule("segmentannotation", &[ATTACHMENT], false),
    rule("transcription", &[ATTACHMENT], true),
    rule("textcollection", &[ATTACHMENTS, Object("fields")], true),
    rule("videoannotation", &[VIDEO], false),
    rule("videoboxannotation", &[VIDEO], false),
    rule("videoplaybackannotation", &[VIDEO], false),
    rule("videocuboidannotation", &[VIDEO], false),
    rule("sensorfusion", &[ATTACHMENTS], false),
    rule("chat", &[], true),
    rule("chatexperimental", &[], true),
    rule("chatlite", &[], true),
    rule("multichat", &[], true),
    rule("multistage", &[], false),
    rule("federal2dvideoannotation", &[VIDEO], false),
];

const fn rule(name: &'static str, required: &'static [Required], needs_instruction: bool) -> Rules {
    Rules {
        name,
        required,
        needs_instruction,
    }
}

/// A known Scale task type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskType(&'static Rules);

impl PartialEq for Rules {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for Rules {}
impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl TaskType {
    pub fn parse(name: &str) -> Option<Self> {
        RULES.iter().find(|rules| rules.name == name).map(TaskType)
    }

    pub fn name(self) -> &'static str {
        self.0.name
    }

    pub fn all_names() -> impl Iterator<Item = &'static str> {
        RULES.iter().map(|rules| rules.name)
    }

    pub fn needs_instruction(self) -> bool {
        self.0.needs_instruction
    }

    /// Checks the type-specific fields; the error names the first field that fails.
    pub fn check_params(self, params: &Map<String, Value>) -> Result<(), String> {
        for required in self.0.required {
            match *required {
                Required::Text(field) => match params.get(field) {
                    Some(Value::String(text)) if !text.trim().is_empty() => {}
                    Some(Value::String(_)) | None | Some(Value::Null) => {
                        return Err(missing(self, field))
                    }
                    Some(_) => return Err(format!("Parameter '{field}' must be a string.")),
                },
                Required::List(field) => match params.get(field) {
                    Some(Value::Array(items)) if !items.is_empty() => {}
                    Some(Value::Array(_)) | None | Some(Value::Null) => {
                        return Err(missing(self, field))
                    }
                    Some(_) => return Err(format!("Parameter '{field}' must be an array.")),
                },
                Required::Object(field) => match params.get(field) {
                    Some(Value::Object(map)) if !map.is_empty() => {}
                    Some(Value::Object(_)) | None | Some(Value::Null) => {
                        return Err(missing(self, field))
                    }
                    Some(_) => return Err(format!("Parameter '{field}' must be an object.")),
                },
                Required::OneOf(fields) => {
                    let present = fields.iter().any(|field| match params.get(*field) {
                        Some(Value::String(text)) => !text.trim().is_empty(),
                        Some(Value::Array(items)) => !items.is_empty(),
                        _ => false,
                    });
                    if !present {
                        return Err(format!(
                            "Missing required parameter for {} tasks: one of {}.",
                            self.name(),
                            fields
                                .iter()
                                .map(|field| format!("'{field}'"))
                                .collect::<Vec<_>>()
                                .join(" or ")
                        ));
                    }
                }
            }
        }
        for (field, expected) in [("attachment", "a string"), ("attachment_type", "a string")] {
            if let Some(value) = params.get(field) {
                if !value.is_string() && !value.is_null() {
                    return Err(format!("Parameter '{field}' must be {expected}."));
                }
            }
        }
        Ok(())
    }
}

fn missing(task_type: TaskType, field: &str) -> String {
    format!(
        "Missing required parameter for {} tasks: '{field}'.",
        task_type.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn every_scale_client_type_is_known_and_nothing_else() {
        assert_eq!(TaskType::all_names().count(), 31);
        assert!(TaskType::parse("imageannotation").is_some());
        assert!(TaskType::parse("ImageAnnotation").is_none());
        assert!(TaskType::parse("nope").is_none());
    }

    #[test]
    fn image_annotation_needs_an_attachment_and_geometries() {
        let image = TaskType::parse("imageannotation").unwrap();
        let err = image.check_params(&params(json!({}))).unwrap_err();
        assert!(err.contains("'attachment'"), "{err}");
        let err = image
            .check_params(&params(json!({"attachment": "http://x/1.png"})))
            .unwrap_err();
        assert!(err.contains("'geometries'"), "{err}");
        image
            .check_params(&params(
                json!({"attachment": "http://x/1.png", "geometries": {"box": {}}}),
            ))
            .unwrap();
    }

    #[test]
    fn wrongly_typed_fields_are_named() {
        let image = TaskType::parse("imageannotation").unwrap();
        let err = image
            .check_params(&params(json!({"attachment": 5, "geometries": {"box": {}}})))
            .unwrap_err();
        assert!(err.contains("'attachment' must be a string"), "{err}");
    }

    #[test]
    fn video_accepts_either_attachment_form() {
        let video = TaskType::parse("videoannotation").unwrap();
        assert!(video
            .check_params(&params(json!({"attachments": ["a"]})))
            .is_ok());
        assert!(video
            .check_params(&params(json!({"attachment": "a"})))
            .is_ok());
        assert!(video.check_params(&params(json!({}))).is_err());
    }
}
