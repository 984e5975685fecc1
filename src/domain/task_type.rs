//! Scale's task types and the creation fields each one requires.

use serde_json::{json, Map, Value};

/// What JSON a required field must hold; any of them must also be non-empty.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A string, e.g. an attachment URL.
    Text,
    /// An array.
    List,
    /// An object, e.g. `geometries`.
    Object,
    /// An array or an object (Scale documents both forms of `fields`).
    ListOrObject,
}

impl Shape {
    fn accepts(self, value: &Value) -> bool {
        match self {
            Shape::Text => value.is_string(),
            Shape::List => value.is_array(),
            Shape::Object => value.is_object(),
            Shape::ListOrObject => value.is_array() || value.is_object(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Shape::Text => "a string",
            Shape::List => "an array",
            Shape::Object => "an object",
            Shape::ListOrObject => "an array or an object",
        }
    }
}

/// A non-blank string, or a non-empty array or object.
fn is_filled(value: &Value) -> bool {
    match value {
        Value::String(text) => !text.trim().is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
        _ => false,
    }
}

/// A field a task type cannot be created without.
#[derive(Debug, Clone, Copy)]
enum Required {
    Field(&'static str, Shape),
    /// At least one of these, as a non-empty string or array.
    OneOf(&'static [&'static str]),
}

/// The shape of a finished task's `response`, for the synthetic answers of the test world.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Annotations,
    Category,
    Choice,
    Fields,
    Transcription,
    Entities,
    Messages,
}

struct Rules {
    name: &'static str,
    required: &'static [Required],
    /// Scale rejects these without an instruction (unless a project supplies one).
    needs_instruction: bool,
    answer: Answer,
}

const ATTACHMENT: Required = text("attachment");
const ATTACHMENTS: Required = list("attachments");
const VIDEO: Required = Required::OneOf(&["attachments", "attachment"]);

use Answer::{Annotations, Category, Choice, Entities, Fields, Messages, Transcription};
const fn text(field: &'static str) -> Required {
    Required::Field(field, Shape::Text)
}
const fn list(field: &'static str) -> Required {
    Required::Field(field, Shape::List)
}
const fn object(field: &'static str) -> Required {
    Required::Field(field, Shape::Object)
}
const fn list_or_object(field: &'static str) -> Required {
    Required::Field(field, Shape::ListOrObject)
}

/// Every value of the Scale Python client's `TaskType`.
static RULES: &[Rules] = &[
    rule("annotation", &[ATTACHMENT], false, Annotations),
    rule(
        "categorization",
        &[ATTACHMENT, list("categories")],
        true,
        Category,
    ),
    rule("comparison", &[ATTACHMENTS], true, Choice),
    rule("cuboidannotation", &[ATTACHMENT], false, Annotations),
    rule("datacollection", &[ATTACHMENT], true, Fields),
    rule("documentmodel", &[ATTACHMENT], false, Fields),
    rule("documenttranscription", &[ATTACHMENT], false, Transcription),
    rule(
        "imageannotation",
        &[ATTACHMENT, object("geometries")],
        false,
        Annotations,
    ),
    rule("laneannotation", &[ATTACHMENT], false, Annotations),
    rule("lidarannotation", &[ATTACHMENTS], false, Annotations),
    rule("lidarlinking", &[ATTACHMENTS], false, Annotations),
    rule("lidarsegmentation", &[ATTACHMENTS], false, Annotations),
    rule("lidartopdown", &[ATTACHMENTS], false, Annotations),
    rule("lineannotation", &[ATTACHMENT], false, Annotations),
    rule(
        "namedentityrecognition",
        &[text("text"), list("labels")],
        true,
        Entities,
    ),
    rule("pointannotation", &[ATTACHMENT], false, Annotations),
    rule("polygonannotation", &[ATTACHMENT], false, Annotations),
    rule("segmentannotation", &[ATTACHMENT], false, Annotations),
    rule("transcription", &[ATTACHMENT], true, Transcription),
    rule(
        "textcollection",
        &[ATTACHMENTS, list_or_object("fields")],
        true,
        Fields,
    ),
    rule("videoannotation", &[VIDEO], false, Annotations),
    rule("videoboxannotation", &[VIDEO], false, Annotations),
    rule("videoplaybackannotation", &[VIDEO], false, Annotations),
    rule("videocuboidannotation", &[VIDEO], false, Annotations),
    rule("sensorfusion", &[ATTACHMENTS], false, Annotations),
    rule("chat", &[], true, Messages),
    rule("chatexperimental", &[], true, Messages),
    rule("chatlite", &[], true, Messages),
    rule("multichat", &[], true, Messages),
    rule("multistage", &[], false, Fields),
    rule("federal2dvideoannotation", &[VIDEO], false, Annotations),
];

const fn rule(
    name: &'static str,
    required: &'static [Required],
    needs_instruction: bool,
    answer: Answer,
) -> Rules {
    Rules {
        name,
        required,
        needs_instruction,
        answer,
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
                Required::Field(field, shape) => match params.get(field) {
                    None | Some(Value::Null) => return Err(missing(self, field)),
                    Some(value) if !shape.accepts(value) => {
                        return Err(format!("Parameter '{field}' must be {}.", shape.describe()))
                    }
                    Some(value) if !is_filled(value) => return Err(missing(self, field)),
                    Some(_) => {}
                },
                Required::OneOf(fields) => {
                    let present = fields.iter().any(|field| {
                        params
                            .get(*field)
                            .is_some_and(|value| !value.is_object() && is_filled(value))
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
        for field in ["attachment", "attachment_type"] {
            if params
                .get(field)
                .is_some_and(|v| !v.is_string() && !v.is_null())
            {
                return Err(format!("Parameter '{field}' must be a string."));
            }
        }
        Ok(())
    }
}

impl TaskType {
    /// A plausible, non-empty `response` for a task of this type, drawn from its params: what
    /// test-world tasks complete with, so integrations can be exercised end to end.
    pub fn synthetic_response(self, params: &Map<String, Value>) -> Value {
        let first = |field: &str| -> Option<Value> {
            match params.get(field)? {
                Value::Array(items) => items.first().cloned(),
                Value::Object(map) => map.keys().next().map(|key| json!(key)),
                _ => None,
            }
        };
        match self.0.answer {
            Answer::Annotations => {
                let geometry = first("geometries").unwrap_or_else(|| json!("box"));
                let label = params
                    .get("geometries")
                    .and_then(|geometries| {
                        geometries
                            .as_object()?
                            .values()
                            .next()?
                            .get("objects_to_annotate")?
                            .as_array()?
                            .first()
                            .cloned()
                    })
                    .or_else(|| first("objects_to_annotate"))
                    .unwrap_or_else(|| json!("object"));
                json!({"annotations": [{
                    "type": geometry, "label": label,
                    "left": 0, "top": 0, "width": 1, "height": 1,
                }]})
            }
            Answer::Category => json!({
                "category": first("categories").unwrap_or_else(|| json!("test")),
            }),
            Answer::Choice => json!({
                "choice": first("choices").unwrap_or_else(|| json!("test")),
                "fields": {},
            }),
            Answer::Fields => {
                let mut fields = Map::new();
                match params.get("fields") {
                    Some(Value::Array(items)) => {
                        for item in items {
                            if let Some(id) = item.get("field_id").and_then(Value::as_str) {
                                fields.insert(id.to_owned(), json!("test response"));
                            }
                        }
                    }
                    Some(Value::Object(map)) => {
                        for key in map.keys() {
                            fields.insert(key.clone(), json!("test response"));
                        }
                    }
                    _ => {}
                }
                if fields.is_empty() {
                    fields.insert("value".to_owned(), json!("test response"));
                }
                json!({"fields": fields})
            }
            Answer::Transcription => json!({"transcription": "test transcription"}),
            Answer::Entities => json!({"entities": [{
                "label": first("labels").unwrap_or_else(|| json!("entity")),
                "start": 0, "end": 1,
            }]}),
            Answer::Messages => {
                json!({"responses": [{"role": "assistant", "content": "test response"}]})
            }
        }
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
    fn every_type_has_a_non_empty_synthetic_response() {
        for name in TaskType::all_names() {
            let response = TaskType::parse(name)
                .unwrap()
                .synthetic_response(&Map::new());
            assert!(
                response.as_object().is_some_and(|map| !map.is_empty()),
                "{name}"
            );
        }
        let image = TaskType::parse("imageannotation").unwrap();
        let response = image.synthetic_response(&params(
            json!({"geometries": {"polygon": {"objects_to_annotate": ["car"]}}}),
        ));
        assert_eq!(response["annotations"][0]["type"], "polygon");
        assert_eq!(response["annotations"][0]["label"], "car");
    }

    #[test]
    fn textcollection_fields_may_be_an_array_or_an_object() {
        let text = TaskType::parse("textcollection").unwrap();
        let array = json!({"attachments": ["a"], "fields": [{"type": "text", "field_id": "hq"}]});
        assert!(text.check_params(&params(array)).is_ok());
        assert!(text
            .check_params(&params(
                json!({"attachments": ["a"], "fields": {"hq": "x"}})
            ))
            .is_ok());
        assert!(text
            .check_params(&params(json!({"attachments": ["a"], "fields": "x"})))
            .is_err());
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
