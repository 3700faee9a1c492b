//! SCIM filters (RFC 7644 §3.4.2.2): `userName eq "ann"`, `emails[type eq "work"]`,
//! `members[value eq "u1"]`, combined with `and`, `or`, `not (...)` and parentheses. Pure.
//!
//! Attribute names are case-insensitive; string comparisons are too, except for the attributes
//! RFC 7643 declares case-exact (`id`, `externalId`, `value`, `$ref`).

use super::ScimError;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Present(Vec<String>),
    Compare(Vec<String>, Op, Value),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

/// Longest filter accepted: they come from query strings and PATCH paths.
const MAX_FILTER_LEN: usize = 4_096;
/// Deepest nesting of parentheses and `not`.
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Value(Value),
    Open,
    Close,
}

fn invalid(detail: impl Into<String>) -> ScimError {
    ScimError::bad_request("invalidFilter", detail)
}

fn tokens(text: &str) -> Result<Vec<Token>, ScimError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            ' ' | '\t' => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Token::Open);
            }
            ')' => {
                chars.next();
                out.push(Token::Close);
            }
            '"' => {
                // A JSON string: find its closing quote, honouring escapes.
                chars.next();
                let mut escaped = false;
                let mut end = None;
                for (j, d) in chars.by_ref() {
                    match (escaped, d) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(j);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.ok_or_else(|| invalid("a string is not closed"))?;
                let value: Value = serde_json::from_str(&text[i..=end])
                    .map_err(|e| invalid(format!("bad string: {e}")))?;
                out.push(Token::Value(value));
            }
            _ => {
                let start = i;
                let mut end = text.len();
                while let Some(&(j, d)) = chars.peek() {
                    if matches!(d, ' ' | '\t' | '(' | ')' | '"') {
                        end = j;
                        break;
                    }
                    chars.next();
                }
                out.push(Token::Word(text[start..end].to_string()));
            }
        }
    }
    Ok(out)
}

/// Parses a filter.
pub fn parse(text: &str) -> Result<Filter, ScimError> {
    if text.len() > MAX_FILTER_LEN {
        return Err(invalid(format!(
            "the filter is longer than {MAX_FILTER_LEN} bytes"
        )));
    }
    let tokens = tokens(text)?;
    let mut p = Parser { tokens, at: 0 };
    let f = p.or(0)?;
    if p.at != p.tokens.len() {
        return Err(invalid(format!("unexpected {:?}", p.tokens[p.at])));
    }
    Ok(f)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn or(&mut self, depth: usize) -> Result<Filter, ScimError> {
        let mut left = self.and(depth)?;
        while self.keyword("or") {
            self.at += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and(depth)?));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Filter, ScimError> {
        let mut left = self.factor(depth)?;
        while self.keyword("and") {
            self.at += 1;
            left = Filter::And(Box::new(left), Box::new(self.factor(depth)?));
        }
        Ok(left)
    }

    fn factor(&mut self, depth: usize) -> Result<Filter, ScimError> {
        if depth > MAX_DEPTH {
            return Err(invalid("the filter nests too deeply"));
        }
        if self.keyword("not") {
            self.at += 1;
            if self.next() != Some(Token::Open) {
                return Err(invalid("`not` must be followed by `(`"));
            }
            let inner = self.or(depth + 1)?;
            if self.next() != Some(Token::Close) {
                return Err(invalid("a `(` is not closed"));
            }
            return Ok(Filter::Not(Box::new(inner)));
        }
        match self.next() {
            Some(Token::Open) => {
                let inner = self.or(depth + 1)?;
                if self.next() != Some(Token::Close) {
                    return Err(invalid("a `(` is not closed"));
                }
                Ok(inner)
            }
            Some(Token::Word(path)) => {
                let path = attribute_path(&path)?;
                let op = match self.next() {
                    Some(Token::Word(op)) => op.to_ascii_lowercase(),
                    other => return Err(invalid(format!("expected an operator, got {other:?}"))),
                };
                let op = match op.as_str() {
                    "pr" => return Ok(Filter::Present(path)),
                    "eq" => Op::Eq,
                    "ne" => Op::Ne,
                    "co" => Op::Co,
                    "sw" => Op::Sw,
                    "ew" => Op::Ew,
                    "gt" => Op::Gt,
                    "ge" => Op::Ge,
                    "lt" => Op::Lt,
                    "le" => Op::Le,
                    other => return Err(invalid(format!("unknown operator {other:?}"))),
                };
                let value = match self.next() {
                    Some(Token::Value(v)) => v,
                    Some(Token::Word(w)) => match w.to_ascii_lowercase().as_str() {
                        "true" => Value::Bool(true),
                        "false" => Value::Bool(false),
                        "null" => Value::Null,
                        _ => serde_json::from_str::<serde_json::Number>(&w)
                            .map(Value::Number)
                            .map_err(|_| invalid(format!("{w:?} is not a value")))?,
                    },
                    other => return Err(invalid(format!("expected a value, got {other:?}"))),
                };
                Ok(Filter::Compare(path, op, value))
            }
            other => Err(invalid(format!("expected an attribute, got {other:?}"))),
        }
    }
}

/// `urn:...:User:name.givenName` -> `["name", "givenName"]`.
pub fn attribute_path(text: &str) -> Result<Vec<String>, ScimError> {
    let text = strip_schema(text);
    let parts: Vec<String> = text.split('.').map(str::to_string).collect();
    let valid = |p: &String| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$'))
    };
    if parts.len() > 2 || !parts.iter().all(valid) {
        return Err(invalid(format!("{text:?} is not an attribute path")));
    }
    Ok(parts)
}

/// The attribute name without its schema URN prefix.
pub fn strip_schema(text: &str) -> &str {
    if text.starts_with("urn:") {
        // The attribute follows the schema's last ':' (schemas hold dots, as in `2.0`; a value
        // filter may hold colons).
        let head = text.split('[').next().unwrap_or(text);
        let cut = head.rfind(':').map_or(0, |i| i + 1);
        &text[cut..]
    } else {
        text
    }
}

/// The value of `key` in `obj`, matched case-insensitively.
pub fn get_ci<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn case_exact(attribute: &str) -> bool {
    ["id", "externalid", "value", "$ref"].contains(&attribute.to_ascii_lowercase().as_str())
}

/// The values an attribute path reaches in a resource (multi-valued attributes flatten).
fn values<'a>(resource: &'a Value, path: &[String]) -> Vec<&'a Value> {
    let mut current = vec![resource];
    for part in path {
        let mut next = Vec::new();
        for v in current {
            let items: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for item in items {
                if let Some(found) = item.as_object().and_then(|o| get_ci(o, part)) {
                    match found {
                        Value::Array(a) => next.extend(a.iter()),
                        other => next.push(other),
                    }
                }
            }
        }
        current = next;
    }
    current
}

fn compare(found: &Value, op: Op, want: &Value, exact: bool) -> bool {
    match (found, want) {
        (Value::String(a), Value::String(b)) => {
            let (a, b) = if exact {
                (a.clone(), b.clone())
            } else {
                (a.to_lowercase(), b.to_lowercase())
            };
            match op {
                Op::Eq => a == b,
                Op::Ne => a != b,
                Op::Co => a.contains(&b),
                Op::Sw => a.starts_with(&b),
                Op::Ew => a.ends_with(&b),
                Op::Gt => a > b,
                Op::Ge => a >= b,
                Op::Lt => a < b,
                Op::Le => a <= b,
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (
                a.as_f64().unwrap_or(f64::NAN),
                b.as_f64().unwrap_or(f64::NAN),
            );
            match op {
                Op::Eq => a == b,
                Op::Ne => a != b,
                Op::Gt => a > b,
                Op::Ge => a >= b,
                Op::Lt => a < b,
                Op::Le => a <= b,
                _ => false,
            }
        }
        (a, b) => match op {
            Op::Eq => a == b,
            Op::Ne => a != b,
            _ => false,
        },
    }
}

impl Filter {
    /// Whether a resource (or one value of a multi-valued attribute) matches.
    pub fn matches(&self, resource: &Value) -> bool {
        match self {
            Filter::Present(path) => values(resource, path).iter().any(|v| {
                !v.is_null() && v.as_str() != Some("") && v.as_array().is_none_or(|a| !a.is_empty())
            }),
            Filter::Compare(path, op, want) => {
                let exact = path.last().is_some_and(|a| case_exact(a));
                let found = values(resource, path);
                if *op == Op::Ne {
                    return found.iter().all(|v| compare(v, Op::Ne, want, exact));
                }
                found.iter().any(|v| compare(v, *op, want, exact))
            }
            Filter::And(a, b) => a.matches(resource) && b.matches(resource),
            Filter::Or(a, b) => a.matches(resource) || b.matches(resource),
            Filter::Not(a) => !a.matches(resource),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_match_as_rfc_7644_says() {
        let ann = json!({"userName": "Ann", "id": "U1", "emails": [{"value": "a@x", "type": "work"}], "active": true});
        for (filter, want) in [
            (r#"userName eq "ann""#, true),
            (r#"USERNAME Eq "ANN""#, true),
            (r#"id eq "u1""#, false),
            (r#"id eq "U1""#, true),
            (r#"emails.value co "@x""#, true),
            (r#"emails[type eq "work"]"#, false),
            (r#"emails.type eq "work" and active eq true"#, true),
            (
                r#"userName sw "b" or (active eq true and not (userName eq "bob"))"#,
                true,
            ),
            ("title pr", false),
            ("userName pr", true),
            (
                r#"urn:ietf:params:scim:schemas:core:2.0:User:userName eq "Ann""#,
                true,
            ),
        ] {
            match parse(filter) {
                Ok(f) => assert_eq!(f.matches(&ann), want, "{filter}"),
                Err(e) => assert!(!want, "{filter}: {e}"),
            }
        }
    }

    #[test]
    fn bad_filters_are_named() {
        for bad in [
            "userName",
            r#"userName eq"#,
            r#"userName zz "x""#,
            r#"userName eq "open"#,
            r#"(userName eq "x""#,
            "a.b.c eq 1",
            &"(".repeat(40),
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.scim_type, Some("invalidFilter"), "{bad}");
        }
    }
}
