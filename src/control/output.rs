//! `--output table|json|yaml` for the control commands' results.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

pub fn render(v: &Value, f: Format) -> String {
    match f {
        Format::Json => serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
        // A List of objects becomes a multi-document stream, as `kubectl apply -f -` reads it.
        Format::Yaml if v["kind"] == "List" => {
            let mut s = String::new();
            for item in v["items"].as_array().into_iter().flatten() {
                s.push_str("---\n");
                s.push_str(&yaml(item));
            }
            s
        }
        Format::Yaml => yaml(v),
        Format::Table => table(v),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "none".into(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            a.iter().map(scalar).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    }
}

/// Scalars as `KEY  value` rows; lists of objects as tables with a header row.
fn table(v: &Value) -> String {
    let Value::Object(m) = v else {
        return scalar(v) + "\n";
    };
    let width = m.keys().map(|k| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    let mut nested = Vec::new();
    for (k, val) in m {
        match val {
            Value::Array(items) if items.iter().any(Value::is_object) => nested.push((k, items)),
            Value::Object(_) => {
                out += &format!("{:width$}  {}\n", k.to_uppercase(), "");
                for line in table(val).lines() {
                    out += &format!("  {line}\n");
                }
            }
            // Long lists one item per line.
            Value::Array(items) if items.len() > 3 => {
                out += &format!("{:width$}  {} items\n", k.to_uppercase(), items.len());
                for i in items {
                    out += &format!("{:width$}  - {}\n", "", scalar(i));
                }
            }
            _ => out += &format!("{:width$}  {}\n", k.to_uppercase(), scalar(val)),
        }
    }
    for (k, items) in nested {
        out += &format!("\n{}\n", k.to_uppercase());
        let mut cols: Vec<String> = Vec::new();
        for i in items {
            if let Value::Object(o) = i {
                for c in o.keys() {
                    if !cols.contains(c) {
                        cols.push(c.clone());
                    }
                }
            }
        }
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|i| cols.iter().map(|c| scalar(&i[c.as_str()])).collect())
            .collect();
        let widths: Vec<usize> = cols
            .iter()
            .enumerate()
            .map(|(n, c)| {
                rows.iter()
                    .map(|r| r[n].len())
                    .chain([c.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
                + "\n"
        };
        out += &line(cols.iter().map(|c| c.to_uppercase()).collect());
        for r in rows {
            out += &line(r);
        }
    }
    out
}

/// YAML by a maintained serializer (serde-saphyr): whatever it writes reads back as the same
/// value, multi-line strings and look-alike scalars included.
fn yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# cannot write YAML: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let v = serde_json::json!({"compute": "aks1", "replicas": [{"pod": "a", "fp": "x"}], "n": null});
        let t = render(&v, Format::Table);
        assert!(t.contains("COMPUTE   aks1"), "{t}");
        assert!(t.contains("POD  FP\na    x\n"), "{t}");
    }

    /// What the YAML output says reads back as the same value: strings that look like other
    /// scalars, multi-line strings with trailing blank lines, keys YAML 1.1 would read as
    /// booleans, empty collections, numbers.
    #[test]
    fn yaml_reads_back_as_the_same_value() {
        let v = serde_json::json!({
            "a": "true", "b": "x: y", "c": "l1\nl2\n", "d": "8443", "e": [], "f": {},
            "g": "a\n\n", "h": " leading", "n": null, "y": "no", "on": 1.5, "k": -3,
            "list": [{"pod": "a", "fp": "x"}, "s", ["nested"]], "quote": "it's \"quoted\" #1",
        });
        let text = render(&v, Format::Yaml);
        let back: Value = serde_saphyr::from_str(&text).expect("valid YAML");
        assert_eq!(back, v, "{text}");
        // A List is a multi-document stream, each document one item.
        let list = serde_json::json!({"kind": "List", "items": [{"a": "a\n\n"}, {"b": 1}]});
        let text = render(&list, Format::Yaml);
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("valid YAML stream");
        assert_eq!(
            docs,
            list["items"].as_array().cloned().unwrap_or_default(),
            "{text}"
        );
    }
}
