//! A record's fields as freshen writes them: the kind of each mapped column, read
//! from the table's schema at start, and the typed values the vendor's answer is
//! converted into before they reach SQL.

use std::fmt;

/// What a column holds, as far as freshen needs to know to bind a value to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Integer,
    Real,
    Text,
    Bool,
}

impl ColumnKind {
    /// From a declared SQL type (SQLite's affinity rules, PostgreSQL's type names).
    pub fn from_sql_type(declared: &str) -> ColumnKind {
        let t = declared.to_ascii_lowercase();
        if t.contains("int") || t == "serial" || t == "bigserial" {
            ColumnKind::Integer
        } else if t.contains("bool") {
            ColumnKind::Bool
        } else if ["real", "floa", "doub", "numeric", "decimal"]
            .iter()
            .any(|p| t.contains(p))
        {
            ColumnKind::Real
        } else {
            ColumnKind::Text
        }
    }
}

impl fmt::Display for ColumnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColumnKind::Integer => "an integer",
            ColumnKind::Real => "a number",
            ColumnKind::Text => "a string",
            ColumnKind::Bool => "a boolean",
        })
    }
}

/// One value bound into a mapped column. `Null` is typed at bind time by the
/// column's kind, which PostgreSQL needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Bool(bool),
}

/// As JSON, the way the checkpoint hands a batch to the database.
impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Integer(i) => s.serialize_i64(*i),
            Value::Real(f) => s.serialize_f64(*f),
            Value::Text(t) => s.serialize_str(t),
            Value::Bool(b) => s.serialize_bool(*b),
        }
    }
}

impl Value {
    /// Converts a JSON value for a column of `kind`, or says why it does not fit.
    pub fn from_json(json: &serde_json::Value, kind: ColumnKind) -> Result<Value, String> {
        use serde_json::Value as J;
        let value = match (kind, json) {
            (_, J::Null) => Value::Null,
            (ColumnKind::Integer, J::Number(n)) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => return Err(format!("expected an integer, got {n}")),
            },
            (ColumnKind::Real, J::Number(n)) => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
            (ColumnKind::Text, J::String(s)) => Value::Text(s.clone()),
            (ColumnKind::Bool, J::Bool(b)) => Value::Bool(*b),
            (kind, other) => return Err(format!("expected {kind}, got {}", json_kind(other))),
        };
        Ok(value)
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_from_declared_types() {
        assert_eq!(ColumnKind::from_sql_type("INTEGER"), ColumnKind::Integer);
        assert_eq!(ColumnKind::from_sql_type("bigint"), ColumnKind::Integer);
        assert_eq!(
            ColumnKind::from_sql_type("double precision"),
            ColumnKind::Real
        );
        assert_eq!(ColumnKind::from_sql_type("boolean"), ColumnKind::Bool);
        assert_eq!(
            ColumnKind::from_sql_type("character varying"),
            ColumnKind::Text
        );
        assert_eq!(ColumnKind::from_sql_type(""), ColumnKind::Text);
    }

    #[test]
    fn json_values_convert_or_explain() {
        assert_eq!(
            Value::from_json(&json!(7), ColumnKind::Integer),
            Ok(Value::Integer(7))
        );
        assert_eq!(
            Value::from_json(&json!(1.5), ColumnKind::Real),
            Ok(Value::Real(1.5))
        );
        assert_eq!(
            Value::from_json(&json!(null), ColumnKind::Text),
            Ok(Value::Null)
        );
        assert_eq!(
            Value::from_json(&json!("high"), ColumnKind::Integer),
            Err("expected an integer, got a string".into())
        );
        assert!(Value::from_json(&json!(1.5), ColumnKind::Integer).is_err());
        assert!(Value::from_json(&json!([1]), ColumnKind::Text).is_err());
    }
}
