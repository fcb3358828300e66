//! Table and column names from the configuration: checked once, quoted once.

use std::fmt;

/// A plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes, PostgreSQL's
/// limit). Anything else is refused when the configuration is read, so a name can
/// never carry SQL into a statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Ident(String);

impl TryFrom<String> for Ident {
    type Error = String;
    fn try_from(name: String) -> Result<Ident, String> {
        Ident::new(&name)
    }
}

impl Ident {
    pub fn new(name: &str) -> Result<Ident, String> {
        let mut chars = name.chars();
        let plain = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain || name.len() > 63 {
            return Err(format!(
                "\"{name}\" is not a plain identifier: use letters, digits and `_`, starting with a letter or `_`"
            ));
        }
        Ok(Ident(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as it goes into SQL: double-quoted, which both SQLite and
    /// PostgreSQL read as an identifier. The only place names are quoted.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names_only() {
        for ok in ["people", "_x", "refreshed_at", "T1"] {
            assert!(Ident::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "a b",
            "a\"b",
            "people; drop table x",
            "a-b",
            "é",
            &"x".repeat(64),
        ] {
            assert!(Ident::new(bad).is_err(), "{bad}");
        }
        assert_eq!(Ident::new("people").unwrap().quoted(), "\"people\"");
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Whatever a name holds, an accepted one is plain, so its quoted form is
            /// exactly one identifier: no quote, semicolon, space or comment can
            /// reach the SQL.
            #[test]
            fn any_name_is_refused_or_quoted_as_one_identifier(
                name in "\\PC{0,70}|[A-Za-z_][A-Za-z0-9_\"; -]{0,70}"
            ) {
                if let Ok(ident) = Ident::new(&name) {
                    prop_assert!(name.len() <= 63);
                    prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
                    prop_assert_eq!(ident.quoted(), format!("\"{name}\""));
                }
            }
        }
    }
}
