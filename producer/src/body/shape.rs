//! The shape of a JSON body, measured before it is parsed.
//!
//! A megabyte of `[0,0,0,…]` parses into half a million `serde_json::Value`s (tens of
//! megabytes), and deep nesting recurses. So one linear pass over the bytes, which keeps a
//! counter per open container and nothing else, bounds depth, keys per object, elements per
//! array and values in all, and tells the parsed size the request is charged for
//! ([`crate::quota`]) before any tree is built. It does not validate JSON: serde does, after.

/// The caps, from `http.max_json_*`, `http.max_object_keys`, `http.max_array_elements`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    pub max_depth: usize,
    pub max_values: usize,
    pub max_object_keys: usize,
    pub max_array_elements: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_values: 100_000,
            max_object_keys: 256,
            max_array_elements: 1_000,
        }
    }
}

/// Which cap a body went past (413).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("the body nests arrays and objects deeper than {0} levels (http.max_json_depth)")]
    TooDeep(usize),
    #[error("the body holds more than {0} JSON values (http.max_json_values)")]
    TooManyValues(usize),
    #[error("an object in the body has more than {0} keys (http.max_object_keys)")]
    TooManyKeys(usize),
    #[error("an array in the body has more than {0} elements (http.max_array_elements)")]
    TooManyElements(usize),
}

/// What a body will parse into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    /// Scalars, arrays and objects, the top-level ones included.
    pub values: usize,
    pub max_depth: usize,
}

#[derive(Clone, Copy)]
struct Open {
    object: bool,
    elements: usize,
    /// Whether a value (or key) has started since the last `,` or the opening bracket.
    started: bool,
}

/// Measures `body` against `limits`. The top-level array of a JSON body is bounded by the
/// per-request event limit instead of `max_array_elements`.
pub fn check(body: &[u8], limits: &JsonLimits) -> Result<Shape, ShapeError> {
    let mut stack: Vec<Open> = Vec::new();
    let mut shape = Shape::default();
    let mut i = 0;
    // Each new value (or object key) counts once, at its first byte.
    let start_token = |stack: &mut Vec<Open>, shape: &mut Shape| -> Result<(), ShapeError> {
        match stack.last_mut() {
            Some(open) if !open.started => {
                open.started = true;
                open.elements += 1;
                let top_level_array = stack.len() == 1 && !stack[0].object;
                let open = stack[stack.len() - 1];
                if open.object && open.elements > limits.max_object_keys {
                    return Err(ShapeError::TooManyKeys(limits.max_object_keys));
                }
                if !open.object && !top_level_array && open.elements > limits.max_array_elements {
                    return Err(ShapeError::TooManyElements(limits.max_array_elements));
                }
                if !open.object {
                    shape.values += 1;
                }
            }
            Some(open) if open.object => {
                // The value after a key's `:`.
                shape.values += 1;
            }
            Some(_) => {}
            None => shape.values += 1,
        }
        if shape.values > limits.max_values {
            return Err(ShapeError::TooManyValues(limits.max_values));
        }
        Ok(())
    };
    while i < body.len() {
        let b = body[i];
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b',' => {
                if let Some(open) = stack.last_mut() {
                    open.started = false;
                }
            }
            b':' => {
                // The object's value starts next; counted by `start_token`'s object arm.
                if let Some(open) = stack.last_mut() {
                    if open.object {
                        open.started = true;
                    }
                }
                let mut j = i + 1;
                while j < body.len() && matches!(body[j], b' ' | b'\t' | b'\n' | b'\r') {
                    j += 1;
                }
                if j < body.len() {
                    shape.values += 1;
                    if shape.values > limits.max_values {
                        return Err(ShapeError::TooManyValues(limits.max_values));
                    }
                    // Mark so the value's first byte is not counted again.
                    i = j;
                    match body[i] {
                        b'{' | b'[' => {
                            push(&mut stack, body[i] == b'{', limits, &mut shape)?;
                        }
                        b'"' => i = skip_string(body, i),
                        _ => i = skip_scalar(body, i),
                    }
                }
            }
            b'{' | b'[' => {
                start_token(&mut stack, &mut shape)?;
                push(&mut stack, b == b'{', limits, &mut shape)?;
            }
            b'}' | b']' => {
                stack.pop();
            }
            b'"' => {
                start_token(&mut stack, &mut shape)?;
                i = skip_string(body, i);
            }
            _ => {
                start_token(&mut stack, &mut shape)?;
                i = skip_scalar(body, i);
            }
        }
        i += 1;
    }
    Ok(shape)
}

fn push(
    stack: &mut Vec<Open>,
    object: bool,
    limits: &JsonLimits,
    shape: &mut Shape,
) -> Result<(), ShapeError> {
    if stack.len() >= limits.max_depth {
        return Err(ShapeError::TooDeep(limits.max_depth));
    }
    stack.push(Open {
        object,
        elements: 0,
        started: false,
    });
    shape.max_depth = shape.max_depth.max(stack.len());
    Ok(())
}

/// The index of the closing quote of the string opening at `i` (or the last byte).
fn skip_string(body: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    body.len().saturating_sub(1)
}

/// The index of the last byte of the number or literal starting at `i`.
fn skip_scalar(body: &[u8], mut i: usize) -> usize {
    while i + 1 < body.len()
        && !matches!(
            body[i + 1],
            b',' | b']' | b'}' | b':' | b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'[' | b'{'
        )
    {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(json: &str) -> usize {
        check(json.as_bytes(), &JsonLimits::default())
            .unwrap()
            .values
    }

    /// The count a parsed tree really has, to hold the scan to it.
    fn parsed(v: &serde_json::Value) -> usize {
        1 + match v {
            serde_json::Value::Array(a) => a.iter().map(parsed).sum(),
            serde_json::Value::Object(o) => o.values().map(parsed).sum(),
            _ => 0,
        }
    }

    #[test]
    fn counts_what_serde_builds() {
        for json in [
            "1",
            "[]",
            "{}",
            r#"{"a":1}"#,
            r#"{"a": [1, 2, {"b": "x,]}"}], "c" : null}"#,
            r#"[{"event_type":"login","params":{"k":"v\"q"}},{"event_type":"x"}]"#,
            r#"[[[]],[{}],"a\\",true,false,-1.5e3]"#,
        ] {
            let tree: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(values(json), parsed(&tree), "{json}");
        }
    }

    #[test]
    fn each_cap_is_named() {
        let limits = JsonLimits {
            max_depth: 3,
            max_values: 50,
            max_object_keys: 2,
            max_array_elements: 3,
        };
        let err = |json: &str| check(json.as_bytes(), &limits).unwrap_err();
        assert_eq!(err("[[[[1]]]]"), ShapeError::TooDeep(3));
        assert_eq!(err(r#"{"a":1,"b":2,"c":3}"#), ShapeError::TooManyKeys(2));
        assert_eq!(err(r#"[{"a":[1,2,3,4]}]"#), ShapeError::TooManyElements(3));
        let many = format!("[{}]", vec!["1"; 60].join(","));
        assert_eq!(err(&many), ShapeError::TooManyValues(50));
        // The top-level array is the event limit's business, not max_array_elements.
        assert!(check(b"[1,2,3,4,5]", &limits).is_ok());
        // Brackets inside strings are text.
        assert!(check(br#"["[[[[[[", "{{{{"]"#, &limits).is_ok());
    }

    #[test]
    fn ndjson_lines_are_separate_top_level_values() {
        assert_eq!(values("{\"a\":1}\n{\"b\":[1,2]}\n"), 2 + 1 + 3);
    }
}
