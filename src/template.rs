//! Request templates: the text of `api.path`, `api.query`, `api.headers` and
//! `api.body`, read once at start into [`Template`]s, then compiled against the
//! columns a run reads into [`Compiled`] ones that fill a request per record.
//!
//! A template is literal text with two kinds of reference: `{column}`, a column
//! of the record (its key or another), and `${VAR}`, an environment variable,
//! resolved at start. A value from `${VAR}` is a [`Secret`]: it is sent, never
//! shown, and a vendor's message that repeats it has it redacted.
//!
//! The body is a JSON document whose string values are templates; a string
//! that is a single `{column}` and nothing else takes the column's SQL type
//! ([`Json::Text`] filled by [`typed`]), so an integer column is sent as a
//! JSON number and a NULL as `null` or nothing ([`Nulls`]).

use serde_json::Value as J;

use crate::error::Secret;
use crate::ident::Ident;
use crate::record::ColumnKind;

/// One piece of a template, as written.
#[derive(Debug, Clone)]
pub enum Part {
    Literal(String),
    /// A `${VAR}`'s value.
    Secret(Secret),
    Column(Ident),
}

/// Text with `{column}` and `${VAR}` references.
#[derive(Debug, Clone, Default)]
pub struct Template {
    pub parts: Vec<Part>,
}

/// A template parsed from the file: the first `${VAR}` that is not set, if
/// one is not, with the message that says so (only a call needs it: the
/// template holds an empty value in its place until then).
pub type Parsed = (Template, Option<String>);

impl Template {
    /// Parses `text`, `{column}` placeholders and `${VAR}` references alike.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Parsed, String> {
        parse(text, env, true)
    }

    /// Parses `text` for `${VAR}` references only: `{` and `}` are literal
    /// (a database URL's password may hold them).
    pub fn parse_vars(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Parsed, String> {
        parse(text, env, false)
    }

    /// The columns the template reads, in order.
    pub fn columns(&self) -> impl Iterator<Item = &Ident> {
        self.parts.iter().filter_map(|p| match p {
            Part::Column(c) => Some(c),
            _ => None,
        })
    }

    /// Whether any of its text came from the environment.
    pub fn is_secret(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Secret(_)))
    }

    /// The values it took from the environment.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Secret(s) => Some(s.expose()),
            _ => None,
        })
    }

    /// The text, when it reads no column.
    pub fn fixed(&self) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Secret(s) => out.push_str(s.expose()),
                Part::Column(_) => return None,
            }
        }
        Some(out)
    }

    /// Compiled against the columns a run reads: `key` is the record's key,
    /// `columns` the others, in the order the store reads them.
    pub fn compile(&self, key: &Ident, columns: &[Ident]) -> Compiled {
        let pieces = self.parts.iter().map(|part| match part {
            Part::Literal(s) => Piece::Text(s.clone(), false),
            Part::Secret(s) => Piece::Text(s.expose().to_owned(), true),
            Part::Column(c) if c == key => Piece::Value(Slot::Key),
            Part::Column(c) => Piece::Value(Slot::Param(
                columns
                    .iter()
                    .position(|other| other == c)
                    .expect("the store reads every column a template names"),
            )),
        });
        Compiled(pieces.collect())
    }
}

fn parse(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    columns: bool,
) -> Result<Parsed, String> {
    let mut parts = Vec::new();
    let mut unset = None;
    let mut literal = String::new();
    let mut rest = text;
    loop {
        let next = rest.find(|c| c == '$' || (columns && (c == '{' || c == '}')));
        let Some(at) = next else {
            literal.push_str(rest);
            break;
        };
        let (before, from) = rest.split_at(at);
        literal.push_str(before);
        if let Some(var) = from.strip_prefix("${") {
            let end = var.find('}').ok_or("has a `${` without a closing `}`")?;
            let name = &var[..end];
            let value = env(name).unwrap_or_else(|| {
                unset.get_or_insert_with(|| {
                    format!(
                        "uses ${{{name}}}, which is not set in the environment; export {name} \
                         or remove the reference"
                    )
                });
                String::new()
            });
            flush(&mut parts, &mut literal);
            parts.push(Part::Secret(Secret::new(value)));
            rest = &var[end + 1..];
        } else if let Some(column) = from.strip_prefix('{') {
            let end = column
                .find('}')
                .ok_or_else(|| format!("\"{text}\" has a `{{` without a closing `}}`"))?;
            let name = &column[..end];
            let ident = Ident::new(name).map_err(|e| format!("placeholder `{{{name}}}`: {e}"))?;
            flush(&mut parts, &mut literal);
            parts.push(Part::Column(ident));
            rest = &column[end + 1..];
        } else if from.starts_with('}') {
            return Err(format!("\"{text}\" has a `}}` without an opening `{{`"));
        } else {
            // A `$` that starts no reference.
            literal.push('$');
            rest = &from[1..];
        }
    }
    flush(&mut parts, &mut literal);
    Ok((Template { parts }, unset))
}

fn flush(parts: &mut Vec<Part>, literal: &mut String) {
    if !literal.is_empty() {
        parts.push(Part::Literal(std::mem::take(literal)));
    }
}

/// Where a compiled template's value comes from: the record's key, or the
/// `n`th of the other columns the store reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Key,
    Param(usize),
}

#[derive(Debug, Clone)]
enum Piece {
    /// Text of the file; `true` when it came from `${VAR}`.
    Text(String, bool),
    Value(Slot),
}

/// A record's values as a template reads them: the key, and the other
/// columns as text (`None` for NULL), in the store's order.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    pub key: &'a str,
    pub params: &'a [Option<String>],
}

impl<'a> Values<'a> {
    pub fn get(&self, slot: Slot) -> Option<&'a str> {
        match slot {
            Slot::Key => Some(self.key),
            Slot::Param(i) => self.params.get(i).and_then(Option::as_deref),
        }
    }
}

/// A template ready to fill: its columns resolved to [`Slot`]s.
#[derive(Debug, Clone)]
pub struct Compiled(Vec<Piece>);

impl Compiled {
    /// The slot, when the template is one `{column}` and nothing else.
    pub fn single(&self) -> Option<Slot> {
        match self.0.as_slice() {
            [Piece::Value(slot)] => Some(*slot),
            _ => None,
        }
    }

    /// Appends the filled text to `out`: the file's text as written, `${VAR}`
    /// values and the record's values through `encode` (a NULL is empty).
    pub fn fill(&self, out: &mut String, values: Values, encode: fn(&mut String, &str)) {
        for piece in &self.0 {
            match piece {
                Piece::Text(s, false) => out.push_str(s),
                Piece::Text(s, true) => encode(out, s),
                Piece::Value(slot) => encode(out, values.get(*slot).unwrap_or_default()),
            }
        }
    }

    /// The filled text, nothing encoded.
    pub fn text(&self, values: Values) -> String {
        let mut out = String::new();
        self.fill(&mut out, values, String::push_str);
        out
    }

    /// Whether it is one `{column}` whose value is NULL: a query parameter
    /// or a header that is left out.
    pub fn is_null(&self, values: Values) -> bool {
        self.single().is_some_and(|slot| values.get(slot).is_none())
    }

    /// Whether any of its text came from `${VAR}`.
    pub fn is_secret(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Piece::Text(_, true)))
    }

    /// The record's values it reads.
    pub fn values<'a>(&'a self, values: Values<'a>) -> impl Iterator<Item = Option<&'a str>> + 'a {
        self.0.iter().filter_map(move |piece| match piece {
            Piece::Value(slot) => Some(values.get(*slot)),
            Piece::Text(..) => None,
        })
    }
}

/// A JSON document whose strings are templates (`T`: [`Template`] as read,
/// [`Compiled`] as sent).
#[derive(Debug, Clone)]
pub enum Json<T> {
    Fixed(J),
    Text(T),
    Array(Vec<Json<T>>),
    Object(Vec<(String, Json<T>)>),
}

/// What a body does with a NULL column that is a whole JSON value:
/// `api.body_nulls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Nulls {
    /// Leave the member out of its object (`null` in an array).
    #[default]
    Omit,
    /// Send `null`.
    Null,
}

impl Json<Template> {
    /// The document as a template: every string parsed, `at` naming where
    /// (a JSON pointer into the body) in an error.
    pub fn read(
        doc: J,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Self, Option<String>), String> {
        let mut unset = None;
        let json = read(doc, env, "", &mut unset)?;
        Ok((json, unset))
    }

    /// Every template in the document, depth first.
    pub fn templates(&self) -> Vec<&Template> {
        let mut out = Vec::new();
        self.walk(&mut out);
        out
    }

    fn walk<'a>(&'a self, out: &mut Vec<&'a Template>) {
        match self {
            Json::Fixed(_) => {}
            Json::Text(t) => out.push(t),
            Json::Array(items) => items.iter().for_each(|i| i.walk(out)),
            Json::Object(members) => members.iter().for_each(|(_, m)| m.walk(out)),
        }
    }

    pub fn compile(&self, key: &Ident, columns: &[Ident]) -> Json<Compiled> {
        match self {
            Json::Fixed(v) => Json::Fixed(v.clone()),
            Json::Text(t) => Json::Text(t.compile(key, columns)),
            Json::Array(items) => {
                Json::Array(items.iter().map(|i| i.compile(key, columns)).collect())
            }
            Json::Object(members) => Json::Object(
                members
                    .iter()
                    .map(|(k, m)| (k.clone(), m.compile(key, columns)))
                    .collect(),
            ),
        }
    }
}

fn read(
    doc: J,
    env: &dyn Fn(&str) -> Option<String>,
    at: &str,
    unset: &mut Option<String>,
) -> Result<Json<Template>, String> {
    Ok(match doc {
        J::String(s) => {
            let (template, missing) =
                Template::parse(&s, env).map_err(|e| format!("at {}: {e}", shown_at(at)))?;
            if unset.is_none() {
                *unset = missing;
            }
            match template.fixed() {
                Some(text) if !template.is_secret() => Json::Fixed(J::String(text)),
                _ => Json::Text(template),
            }
        }
        J::Array(items) => Json::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| read(item, env, &format!("{at}/{i}"), unset))
                .collect::<Result<_, _>>()?,
        ),
        J::Object(members) => Json::Object(
            members
                .into_iter()
                .map(|(k, v)| {
                    let child = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                    Ok((k, read(v, env, &child, unset)?))
                })
                .collect::<Result<_, String>>()?,
        ),
        fixed => Json::Fixed(fixed),
    })
}

fn shown_at(at: &str) -> &str {
    if at.is_empty() { "the top" } else { at }
}

impl Json<Compiled> {
    /// The document filled from a record: a string that is one `{column}`
    /// takes the column's type from `kinds` (the key's first, then the
    /// others', as [`Slot`]s number them).
    pub fn fill(&self, values: Values, kinds: &[ColumnKind], nulls: Nulls) -> J {
        self.value(values, kinds, nulls).unwrap_or(J::Null)
    }

    /// `None`: a NULL to leave out.
    fn value(&self, values: Values, kinds: &[ColumnKind], nulls: Nulls) -> Option<J> {
        match self {
            Json::Fixed(v) => Some(v.clone()),
            Json::Text(t) => match t.single() {
                Some(slot) => match values.get(slot) {
                    Some(text) => Some(typed(text, kind_of(slot, kinds))),
                    None if nulls == Nulls::Null => Some(J::Null),
                    None => None,
                },
                None => Some(J::String(t.text(values))),
            },
            Json::Array(items) => Some(J::Array(
                items
                    .iter()
                    .map(|i| i.value(values, kinds, nulls).unwrap_or(J::Null))
                    .collect(),
            )),
            Json::Object(members) => Some(J::Object(
                members
                    .iter()
                    .filter_map(|(k, m)| Some((k.clone(), m.value(values, kinds, nulls)?)))
                    .collect(),
            )),
        }
    }
}

fn kind_of(slot: Slot, kinds: &[ColumnKind]) -> ColumnKind {
    let i = match slot {
        Slot::Key => 0,
        Slot::Param(i) => i + 1,
    };
    kinds.get(i).copied().unwrap_or(ColumnKind::Text)
}

/// A column's text (as the store reads it, `CAST(… AS TEXT)`) as the JSON
/// value of its SQL type: an integer or real column a number, a boolean
/// `true`/`false` (PostgreSQL writes `true`, SQLite `1`), text a string. A
/// value that does not read as its type (SQLite lets a column hold anything)
/// is sent as the string it is.
pub fn typed(text: &str, kind: ColumnKind) -> J {
    let parsed = match kind {
        ColumnKind::Integer => text.parse::<i64>().ok().map(J::from),
        ColumnKind::Real => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(J::Number),
        ColumnKind::Bool => match text {
            "1" | "true" | "t" => Some(J::Bool(true)),
            "0" | "false" | "f" => Some(J::Bool(false)),
            _ => None,
        },
        ColumnKind::Text => None,
    };
    parsed.unwrap_or_else(|| J::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        (name == "KEY").then(|| "s3cret".to_owned())
    }

    fn id(s: &str) -> Ident {
        Ident::new(s).unwrap()
    }

    #[test]
    fn placeholders_and_variables_parse_and_errors_say_what() {
        let (t, unset) = Template::parse("/v1/{domain}?k=${KEY}&x=$5", &env).unwrap();
        assert!(unset.is_none());
        assert_eq!(
            t.columns().map(Ident::as_str).collect::<Vec<_>>(),
            ["domain"]
        );
        assert!(t.is_secret());
        assert_eq!(t.secrets().collect::<Vec<_>>(), ["s3cret"]);
        assert!(format!("{t:?}").contains("(redacted)") && !format!("{t:?}").contains("s3cret"));
        let (_, unset) = Template::parse("${NOPE}", &env).unwrap();
        assert!(unset.unwrap().contains("${NOPE}, which is not set"));
        for (bad, says) in [
            ("/v1/{id", "without a closing `}`"),
            ("/v1/id}", "without an opening `{`"),
            ("${KEY", "`${` without a closing `}`"),
            ("{a b}", "placeholder `{a b}`"),
        ] {
            let e = Template::parse(bad, &env).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // A database URL's braces are its own.
        let (t, _) = Template::parse_vars("postgres://u:p{w}@h/${KEY}", &env).unwrap();
        assert_eq!(t.fixed().unwrap(), "postgres://u:p{w}@h/s3cret");
    }

    #[test]
    fn a_compiled_template_fills_from_the_key_and_the_other_columns() {
        let (t, _) = Template::parse("{domain}/{id}-{name}", &env).unwrap();
        let c = t.compile(&id("id"), &[id("name"), id("domain")]);
        let params = [Some("Ann Lee".to_owned()), None];
        let values = Values {
            key: "7",
            params: &params,
        };
        assert_eq!(c.text(values), "/7-Ann Lee");
        let mut out = String::new();
        c.fill(&mut out, values, |out, s| {
            out.push_str(&s.replace(' ', "%20"))
        });
        assert_eq!(out, "/7-Ann%20Lee");
        assert_eq!(
            c.values(values).collect::<Vec<_>>(),
            [None, Some("7"), Some("Ann Lee")]
        );
        assert_eq!(c.single(), None);
        let (one, _) = Template::parse("{name}", &env).unwrap();
        assert_eq!(
            one.compile(&id("id"), &[id("name")]).single(),
            Some(Slot::Param(0))
        );
    }

    #[test]
    fn a_body_keeps_the_columns_types_and_leaves_nulls_out_or_sends_them() {
        let doc = json!({
            "id": "{id}", "score": "{score}", "ok": "{ok}", "name": "{name}",
            "greeting": "hi {name}", "key": "${KEY}", "n": 6, "tags": ["{name}", "x"],
        });
        let (body, unset) = Json::read(doc, &env).unwrap();
        assert!(unset.is_none());
        let columns = [id("score"), id("ok"), id("name")];
        let body = body.compile(&id("id"), &columns);
        use ColumnKind::*;
        let kinds = [Integer, Real, Bool, Text];
        let params = [Some("1.5".to_owned()), Some("1".to_owned()), None];
        let values = Values {
            key: "42",
            params: &params,
        };
        assert_eq!(
            body.fill(values, &kinds, Nulls::Omit),
            json!({"id": 42, "score": 1.5, "ok": true, "greeting": "hi ", "key": "s3cret",
                   "n": 6, "tags": [null, "x"]})
        );
        let sent = body.fill(values, &kinds, Nulls::Null);
        assert_eq!(sent["name"], J::Null);
        // A value that is not of its column's type goes as the text it is.
        assert_eq!(typed("n/a", Integer), json!("n/a"));
        assert_eq!(typed("false", Bool), json!(false));
        let e = Json::read(json!({"a": [{"b": "{x"}]}), &env).unwrap_err();
        assert!(e.starts_with("at /a/0/b: "), "{e}");
    }
}
